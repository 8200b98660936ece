//! `cargo bench --bench sim_resources`: the simulator with 2,000 VMs in one
//! pool answering `GET /cluster/resources` (the target: under 5 ms
//! on the project's machine). Prints the latency distribution of sequential
//! requests over one keep-alive connection, the throughput of concurrent
//! clients, and the project's typed client end to end. It asserts nothing
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

    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    let sequential_start = Instant::now();
    for _ in 0..SEQUENTIAL {
        let request_start = Instant::now();
        fetch(http.clone()).await;
        latencies.push(request_start.elapsed());
    }
    let sequential_total = sequential_start.elapsed();
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    println!("sim_resources: GET /cluster/resources, {SEQUENTIAL} sequential requests over keep-alive (client time, loopback):");
    println!(
        "sim_resources:   min {}  p50 {}  p90 {}  p99 {}  max {}  mean {}",
        ms(latencies[0]),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies[latencies.len() - 1]),
        ms(mean)
    );
    println!("sim_resources:   {:.0} requests/s sequentially", SEQUENTIAL as f64 / sequential_total.as_secs_f64());
    let under_5ms = latencies.iter().filter(|l| **l < Duration::from_millis(5)).count();
    println!("sim_resources:   {under_5ms} of {SEQUENTIAL} answered in under 5 ms");

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
