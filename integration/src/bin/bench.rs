//! `bench`: what `make bench` runs. Measures crashvmm against QEMU on this machine (see
//! `integration/src/bench/`) and writes `docs/benchmarks.md` and its PNG plot.
//!
//! `bench qemu-kdump ...` is the driver that runs QEMU with the kdump guest (inside the software
//! KVM test host, or directly on hardware KVM), `bench net-peer ...` the host side of the network
//! part; `bench` itself starts them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use integration::bench::{
    self, analysis, crashpath, fleet, kdump, live, machine, net, overhead, progress, report, vmcore, Env,
};
use integration::Setup;

#[derive(Parser)]
#[command(about = "Benchmark crashvmm against QEMU and write docs/benchmarks.md (what `make bench` runs)")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: run QEMU with the Linux kdump guest and record its console, QMP and trace.
    QemuKdump(DriverArgs),
    /// Internal: the host side of the network part: binds its ports, starts the VMM given after
    /// `--`, times the guest's transfers and round trips, writes a JSON record.
    NetPeer(PeerArgs),
}

#[derive(Args)]
struct PeerArgs {
    /// The record (JSON).
    #[arg(long)]
    out: PathBuf,
    /// MiB each way.
    #[arg(long, default_value_t = net::MIB)]
    mib: u64,
    /// Round trips timed.
    #[arg(long, default_value_t = net::RR)]
    rr: usize,
    /// The VMM's stdout and stderr.
    #[arg(long)]
    vmm_log: PathBuf,
    /// The VMM command.
    #[arg(last = true, required = true)]
    vmm: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    /// The markdown report.
    #[arg(long, default_value = "docs/benchmarks.md")]
    doc: PathBuf,
    /// The plot (PNG).
    #[arg(long, default_value = "docs/benchmarks.png")]
    png: PathBuf,
    /// Scratch directory for dumps and copies (needs the largest guest size free for QEMU's dump).
    #[arg(long, default_value = "build/bench")]
    work: PathBuf,
    /// Guest sizes in GiB for the vmcore and UNLOAD measurements (overhead: the first and last).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    sizes: Vec<u64>,
    /// One repetition each, for trying the harness out.
    #[arg(long)]
    quick: bool,
    /// Skip the real-Linux crash path (the test host runs, about three minutes).
    #[arg(long)]
    skip_linux: bool,
    /// Only these parts: vmcore, overhead, crash, kdump, live, analysis, fleet, net (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Do not measure: write the report from a results.json of an earlier run.
    #[arg(long)]
    from_json: Option<PathBuf>,
}

#[derive(Args)]
struct DriverArgs {
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Directory of QEMU's shared libraries (LD_LIBRARY_PATH).
    #[arg(long)]
    lib: Option<PathBuf>,
    /// QEMU's firmware directory (-L).
    #[arg(long)]
    fw: Option<PathBuf>,
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initrd: PathBuf,
    /// `default` or a QEMU `-action panic=` value.
    #[arg(long)]
    action: String,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "/tmp")]
    tmp: PathBuf,
    /// Seconds.
    #[arg(long, default_value_t = 200)]
    timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::QemuKdump(a)) => {
            let args = crashpath::DriverArgs {
                qemu: a.qemu,
                lib: a.lib,
                fw: a.fw,
                kernel: a.kernel,
                initrd: a.initrd,
                action: a.action,
                out: a.out,
                tmp: a.tmp,
                timeout: Duration::from_secs(a.timeout),
            };
            match crashpath::qemu_kdump_driver(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench qemu-kdump: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Cmd::NetPeer(a)) => {
            let args = net::PeerArgs { out: a.out, mib: a.mib, rr: a.rr, vmm: a.vmm, vmm_log: a.vmm_log };
            match net::peer(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench net-peer: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => match run(cli.run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(a: RunArgs) -> Result<(), String> {
    bench::start_clock();
    let started = Instant::now();
    let setup = Setup::from_env();
    let work = if a.work.is_absolute() { a.work.clone() } else { setup.root.join(&a.work) };
    let doc = if a.doc.is_absolute() { a.doc.clone() } else { setup.root.join(&a.doc) };
    let png = if a.png.is_absolute() { a.png.clone() } else { setup.root.join(&a.png) };
    if let Some(json) = &a.from_json {
        let text = std::fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
        let mut results: report::Results =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
        for size in &mut results.vmcore {
            size.sort_out_hashed_runs();
        }
        report::write(&results, &doc, &png)?;
        progress(format!("wrote {} and {}", doc.display(), png.display()));
        return Ok(());
    }
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let env = Env::new(setup.clone(), work.clone(), a.quick);
    for (what, path, hint) in [
        ("crashvmm", &env.setup.binary, "make build"),
        ("the test guest", &env.testguest, "make testguest"),
        ("the guest kernel", &env.setup.images.join("guest/vmlinuz"), "make images"),
    ] {
        if !path.is_file() {
            return Err(format!("{what} is missing at {} (run `{hint}`)", path.display()));
        }
    }
    let part = |p: &str| a.only.is_empty() || a.only.iter().any(|o| o == p);
    let mut sizes = a.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        return Err("--sizes is empty".into());
    }
    let ends: Vec<u64> = if sizes.len() > 1 { vec![sizes[0], sizes[sizes.len() - 1]] } else { sizes.clone() };

    progress(format!("crashvmm against QEMU; scratch space {}", work.display()));
    let mut m = machine::describe(&env.setup, &work);
    progress(format!("machine: {} x {}, {:.1} GiB, load {}", m.cpus, m.cpu_model, m.mem_total_gib, m.load_before));
    let sha256_gbps = machine::sha256_gbps();
    progress(format!("SHA-256 on one core: {sha256_gbps:.2} GB/s"));

    let vmcore = if part("vmcore") { vmcore::run(&env, &sizes) } else { Vec::new() };
    let overhead = if part("overhead") { overhead::run(&env, &ends) } else { Default::default() };
    let crash = if part("crash") { crashpath::run(&env, &sizes, !a.skip_linux) } else { Default::default() };
    let kdump = if part("kdump") { kdump::run(&env, &sizes) } else { Vec::new() };
    let live = if part("live") { live::run(&env, &sizes) } else { Vec::new() };
    let analysis = if part("analysis") { analysis::run(&env, &sizes) } else { Default::default() };
    let fleet = if part("fleet") {
        fleet::FleetBench { alone: !a.only.is_empty(), ..fleet::run(&env) }
    } else {
        Default::default()
    };
    let net =
        if part("net") { net::NetBench { alone: !a.only.is_empty(), ..net::run(&env) } } else { Default::default() };
    m.load_after = machine::loadavg();

    let results = report::Results {
        machine: m,
        sha256_gbps,
        sizes,
        vmcore,
        overhead,
        crash,
        kdump,
        live,
        analysis,
        fleet,
        net,
        wall_s: started.elapsed().as_secs_f64(),
        quick: a.quick,
    };
    let json = work.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", json.display()))?;
    report::write(&results, &doc, &png)?;
    progress(format!(
        "wrote {}, {} and {} in {:.1} min",
        doc.display(),
        png.display(),
        json.display(),
        started.elapsed().as_secs_f64() / 60.0
    ));
    Ok(())
}
