//! `cargo bench --bench sim_resources`: the simulator with 2,000 VMs in one
//! pool answering `GET /cluster/resources` (the target: under 5 ms
//! on the project's machine). Prints the latency distribution of sequential
//! requests over one keep-alive connection in four cases: the answer kept
//! between requests (cached); one guest's lock changed before each request
//! (the realistic poll during autoscaling); a write the answer does not
//! show (a held config-file lock) before each request; and every kept
//! answer and item forgotten before each request (written from scratch).
//! For each: the server's own time in the handler (measured in-process),
//! and the process's CPU per request. Then the client's JSON parse alone,
//! the throughput of concurrent clients, and the project's typed client end
//! to end. It asserts nothing about speed: the numbers are for people to
//! read.

use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::pve::{ClientConfig, Credentials, PveClient, Secret};
use fleeting_plugin_proxmox::sim::Counters;
use fleeting_plugin_proxmox::sim::config::{VmSpec, defaults};
use fleeting_plugin_proxmox::sim::{Scenario, SimConfig, Simulator};

const VMS: u32 = 2000;
const SEQUENTIAL: usize = 500;
const CONCURRENT_CLIENTS: usize = 8;
const CONCURRENT_FOR: Duration = Duration::from_secs(3);

fn scenario() -> Scenario {
    let mut scenario = Scenario { seed: Some(1), ..Scenario::default() };
    let template = scenario.vms[0].clone();
    for index in 0..VMS {
        let vmid = 10_000 + index;
        let mut config = template.config.clone();
        config.insert("name".into(), format!("runner-{vmid}"));
        config.insert("scsi0".into(), format!("local-lvm:vm-{vmid}-disk-0,size=8G"));
        config.insert("ide2".into(), format!("local-lvm:vm-{vmid}-cloudinit,media=cdrom"));
        config.insert("net0".into(), "virtio,bridge=vmbr0".into());
        config.insert("tags".into(), "ci;runner".into());
        scenario.vms.push(VmSpec {
            vmid,
            node: if index % 2 == 0 { "pve1" } else { "pve2" }.into(),
            pool: Some(defaults::POOL.into()),
            running: index % 3 == 0,
            config,
            ..VmSpec::default()
        });
    }
    scenario
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1000.0)
}

/// Times `count` calls of `request`, each after an untimed `prepare`.
/// Also returns the process's CPU time per request (client and server
/// together, `prepare` included): unlike wall time, it barely moves when
/// other work shares the machine.
async fn sequential<P, PF, R, RF>(count: usize, mut prepare: P, mut request: R) -> (Vec<Duration>, Duration)
where
    P: FnMut() -> PF,
    PF: std::future::Future<Output = ()>,
    R: FnMut() -> RF,
    RF: std::future::Future<Output = usize>,
{
    let mut latencies = Vec::with_capacity(count);
    let cpu_before = process_cpu_time();
    for _ in 0..count {
        prepare().await;
        let request_start = Instant::now();
        request().await;
        latencies.push(request_start.elapsed());
    }
    let cpu = process_cpu_time().saturating_sub(cpu_before) / count as u32;
    latencies.sort();
    (latencies, cpu)
}

/// User plus system time of this process so far (`/proc/self/stat`, in
/// clock ticks of 10 ms).
fn process_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th of the whole line.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name.split_whitespace().skip(11).take(2).filter_map(|t| t.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}

/// What the server counted while a case ran.
struct ServerSide {
    reused: u64,
    items_serialised: u64,
    handler: Duration,
}

impl ServerSide {
    fn between(before: &Counters, after: &Counters) -> Self {
        Self {
            reused: after.resources_answers_reused - before.resources_answers_reused,
            items_serialised: after.resources_items_serialised - before.resources_items_serialised,
            handler: Duration::from_nanos(after.resources_server_nanos - before.resources_server_nanos),
        }
    }
}

fn report(label: &str, (sorted, cpu): &(Vec<Duration>, Duration), server: &ServerSide) {
    let mean = sorted.iter().sum::<Duration>() / sorted.len() as u32;
    let under_5ms = sorted.iter().filter(|l| **l < Duration::from_millis(5)).count();
    println!("sim_resources: GET /cluster/resources, {} sequential requests over keep-alive, {label}:", sorted.len());
    println!(
        "sim_resources:   min {}  p50 {}  p90 {}  p99 {}  max {}  mean {}",
        ms(sorted[0]),
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.9)),
        ms(percentile(sorted, 0.99)),
        ms(sorted[sorted.len() - 1]),
        ms(mean)
    );
    let count = sorted.len() as u32;
    println!(
        "sim_resources:   {under_5ms} of {} under 5 ms; {} whole answers reused, {:.1} guest items written per request",
        sorted.len(),
        server.reused,
        server.items_serialised as f64 / f64::from(count)
    );
    println!(
        "sim_resources:   server handler {} per request (in-process, building or reusing the answer; sending excluded); CPU {} per request (whole process: client + server)",
        ms(server.handler / count),
        ms(*cpu)
    );
}

/// The machine is shared: the load says how much to trust the numbers.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "unknown".into(), |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let started = Instant::now();
    let sim = Simulator::start(SimConfig::new(scenario()).plain_http()).await.expect("the simulator starts");
    println!("sim_resources: simulator with {} VMs in pool `ci` up in {}", VMS + 1, ms(started.elapsed()));
    let url = format!("{}/cluster/resources", sim.api_url());
    let authorization = format!("PVEAPIToken={}={}", defaults::TOKEN_ID, defaults::TOKEN_SECRET);
    let http = reqwest::Client::builder().pool_max_idle_per_host(CONCURRENT_CLIENTS).build().expect("reqwest builds");

    let fetch = move |http: reqwest::Client| {
        let url = url.clone();
        let authorization = authorization.clone();
        async move {
            let response = http.get(&url).header("Authorization", &authorization).send().await.expect("an answer");
            assert_eq!(response.status(), 200);
            response.bytes().await.expect("a body").len()
        }
    };
    let mut size = 0;
    for _ in 0..50 {
        size = fetch(http.clone()).await;
    }
    println!("sim_resources: one answer is {size} bytes ({} guests plus nodes, storages, pool)", VMS + 1);
    println!(
        "sim_resources: load average {} on {} CPUs",
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let admin = sim.admin();

    // Cached: the cluster does not change between polls, so the kept
    // answer is reused (only uptimes are filled in).
    let before = admin.counters();
    let cached = sequential(SEQUENTIAL, || async {}, || fetch(http.clone())).await;
    report("cached (cluster unchanged between requests)", &cached, &ServerSide::between(&before, &admin.counters()));

    // Realistic cold: one guest's lock flips before every request (outside
    // the timed part): every kept answer is void, one guest item changes.
    let mut flip = false;
    let before = admin.counters();
    let one_changed = sequential(
        SEQUENTIAL,
        || {
            flip = !flip;
            admin.set_config_lock(10_000, flip.then_some("backup")).expect("VM 10000 exists");
            async {}
        },
        || fetch(http.clone()),
    )
    .await;
    report(
        "cold after one guest changed (its lock flipped before each request)",
        &one_changed,
        &ServerSide::between(&before, &admin.counters()),
    );
    admin.set_config_lock(10_000, None).expect("VM 10000 exists");

    // A write /cluster/resources does not show (the config file lock, as a
    // task takes it): whole answers are rechecked, no item is rewritten.
    let mut held = false;
    let before = admin.counters();
    let unrelated = sequential(
        SEQUENTIAL,
        || {
            held = !held;
            admin.hold_lock(10_001, held).expect("VM 10001 exists");
            async {}
        },
        || fetch(http.clone()),
    )
    .await;
    report(
        "after a write the answer does not show (a held file lock flipped before each request)",
        &unrelated,
        &ServerSide::between(&before, &admin.counters()),
    );
    admin.hold_lock(10_001, false).expect("VM 10001 exists");

    // Everything invalidated: every kept answer and item forgotten before
    // each request, so all 2,001 items are written afresh.
    let before = admin.counters();
    let scratch = sequential(
        SEQUENTIAL / 5,
        || {
            admin.forget_kept_resources();
            async {}
        },
        || fetch(http.clone()),
    )
    .await;
    report(
        "cold from scratch (every kept answer and item forgotten before each request)",
        &scratch,
        &ServerSide::between(&before, &admin.counters()),
    );

    // The client's share: parsing the body into JSON values, alone.
    let body = http
        .get(format!("{}/cluster/resources", sim.api_url()))
        .header("Authorization", format!("PVEAPIToken={}={}", defaults::TOKEN_ID, defaults::TOKEN_SECRET))
        .send()
        .await
        .expect("an answer")
        .bytes()
        .await
        .expect("a body");
    let mut parses = Vec::new();
    for _ in 0..50 {
        let parse_start = Instant::now();
        let value: serde_json::Value = serde_json::from_slice(&body).expect("the answer is JSON");
        parses.push(parse_start.elapsed());
        std::hint::black_box(value);
    }
    parses.sort();
    println!(
        "sim_resources: client side alone: serde_json::Value parse of the {} byte answer: p50 {}  p90 {}",
        body.len(),
        ms(percentile(&parses, 0.5)),
        ms(percentile(&parses, 0.9))
    );

    let deadline = Instant::now() + CONCURRENT_FOR;
    let workers: Vec<_> = (0..CONCURRENT_CLIENTS)
        .map(|_| {
            let http = http.clone();
            let fetch = fetch.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    fetch(http.clone()).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("a worker finishes");
    }
    println!(
        "sim_resources: {CONCURRENT_CLIENTS} concurrent clients for {:?}: {total} requests, {:.0} requests/s",
        CONCURRENT_FOR,
        total as f64 / CONCURRENT_FOR.as_secs_f64()
    );

    let mut config = ClientConfig::new(
        sim.base_url(),
        Credentials::Token { token_id: defaults::TOKEN_ID.into(), secret: Secret::new(defaults::TOKEN_SECRET) },
    );
    config.request_timeout = Duration::from_secs(30);
    let pve = PveClient::new(config).expect("the client builds");
    let mut typed = Vec::new();
    for _ in 0..100 {
        let request_start = Instant::now();
        let vms = pve.cluster_vms().await.expect("the typed client decodes the answer");
        assert_eq!(vms.len() as u32, VMS + 1);
        typed.push(request_start.elapsed());
    }
    typed.sort();
    println!(
        "sim_resources: PveClient::cluster_vms (request + decode into generated types), 100 calls: p50 {}  p99 {}",
        ms(percentile(&typed, 0.5)),
        ms(percentile(&typed, 0.99))
    );
    sim.shutdown().await.expect("the simulator stops");
}
