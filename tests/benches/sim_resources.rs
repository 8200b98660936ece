//! `cargo bench --bench sim_resources`: the simulator with 2,000 VMs in one
//! pool answering `GET /cluster/resources` (the target: under 5 ms
//! on the project's machine). Prints the latency distribution of sequential
//! requests over one keep-alive connection, both with the answer kept
//! between requests (cached) and with the cluster changed before every
//! request (cold), the throughput of concurrent clients, and the project's
//! typed client end to end. It asserts nothing
//! about speed: the numbers are for people to read.

use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::pve::{ClientConfig, Credentials, PveClient, Secret};
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

fn report(label: &str, (sorted, cpu): &(Vec<Duration>, Duration), reused: u64) {
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
    println!("sim_resources:   {under_5ms} of {} under 5 ms; {reused} answered from kept bytes; CPU {} per request (client + server)", sorted.len(), ms(*cpu));
}

/// The machine is shared: the load says how much to trust the numbers.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(|_| "unknown".into(), |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
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
    println!("sim_resources: load average {} on {} CPUs", load_average(), std::thread::available_parallelism().map_or(0, |n| n.get()));

    // Cached: the cluster does not change between polls, so the kept
    // answer is reused (only uptimes are filled in).
    let before = sim.admin().counters();
    let cached = sequential(SEQUENTIAL, || async {}, || fetch(http.clone())).await;
    let after = sim.admin().counters();
    report("cached (cluster unchanged between requests)", &cached, after.resources_answers_reused - before.resources_answers_reused);

    // Cold: a lock flips on one guest before every request (outside the
    // timed part), which invalidates every kept answer.
    let admin = sim.admin();
    let mut flip = false;
    let before = sim.admin().counters();
    let cold = sequential(
        SEQUENTIAL,
        || {
            flip = !flip;
            admin.set_config_lock(10_000, flip.then_some("backup")).expect("VM 10000 exists");
            async {}
        },
        || fetch(http.clone()),
    )
    .await;
    let after = sim.admin().counters();
    report("cold (a guest's lock changed before each request)", &cold, after.resources_answers_reused - before.resources_answers_reused);
    admin.set_config_lock(10_000, None).expect("VM 10000 exists");

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

    let mut config = ClientConfig::new(sim.base_url(), Credentials::Token { token_id: defaults::TOKEN_ID.into(), secret: Secret::new(defaults::TOKEN_SECRET) });
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
