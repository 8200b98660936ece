//! The one writer of standard output.
//!
//! In the plugin process stdout belongs to go-plugin: the host reads exactly
//! one line there, the handshake, and anything else printed first breaks the
//! connection. So the crate and the binary deny `print!`/`println!`
//! (`clippy::print_stdout`), `clippy.toml` disallows `std::io::stdout`, and
//! this function is the exception: every write to stdout is a call to
//! [`write()`] (the handshake line in `goplugin::serve`, a command's result in
//! the CLI), which a reviewer can find.

/// Writes `text` to stdout and flushes it. Unlike `print!` it returns an
/// error instead of panicking when the reader went away (`| head`).
#[allow(clippy::disallowed_methods)] // The one place allowed to touch stdout (see the module docs).
pub fn write(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}
