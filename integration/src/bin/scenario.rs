//! `scenario --name NAME --out DIR`: run one Linux scenario under crashvmm (what
//! `make scenario` and `make run` call).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use integration::{run_scenario, Mode, RunOptions, Setup, SCENARIOS};

#[derive(Parser)]
#[command(about = "Run a crashvmm Linux scenario, directly on hardware KVM or in the software KVM test host")]
struct Args {
    /// Scenario name (see --list).
    #[arg(long, required_unless_present = "list")]
    name: Option<String>,
    /// Output directory.
    #[arg(long, required_unless_present = "list")]
    out: Option<PathBuf>,
    /// Force where it runs: direct or testhost (default: detect).
    #[arg(long)]
    mode: Option<String>,
    /// Time limit in seconds (default: the scenario's).
    #[arg(long)]
    timeout: Option<u64>,
    /// Guest memory instead of the scenario's (`768M`, `2G`); a data disk scales with it.
    #[arg(long)]
    memory: Option<String>,
    /// Show the console while it runs.
    #[arg(long)]
    show_console: bool,
    /// List the scenarios.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for s in SCENARIOS {
            println!("{:12} {}", s.name, s.description);
        }
        return ExitCode::SUCCESS;
    }
    let mode = match args.mode.as_deref() {
        None => None,
        Some("direct") => Some(Mode::Direct),
        Some("testhost") => Some(Mode::TestHost),
        Some(other) => {
            eprintln!("scenario: error: --mode must be direct or testhost, not '{other}'");
            return ExitCode::from(2);
        }
    };
    let (name, out) = (args.name.unwrap_or_default(), args.out.unwrap_or_default());
    let opts = RunOptions {
        mode,
        show_console: args.show_console,
        timeout: args.timeout.map(Duration::from_secs),
        memory: args.memory.map(|m| &*Box::leak(m.into_boxed_str())),
    };
    let (detected, why) = integration::detect_mode();
    let shown = mode.unwrap_or(detected);
    eprintln!(
        "scenario {name}: running {} ({})",
        match shown {
            Mode::Direct => "directly on /dev/kvm",
            Mode::TestHost => "in the software KVM test host (qemu-system-x86_64 -accel tcg)",
        },
        if mode.is_some() { "--mode" } else { why.as_str() }
    );
    match run_scenario(&Setup::from_env(), &name, &out, &opts) {
        Ok(o) if o.timed_out => {
            eprintln!(
                "scenario {name}: TIMED OUT after {:.0} s ({}); partial outputs in {}",
                o.elapsed.as_secs_f64(),
                o.mode.as_str(),
                o.out.display()
            );
            ExitCode::FAILURE
        }
        Ok(o) => {
            let code = o.exit_code.map_or("none".into(), |c| c.to_string());
            let verdict = o.verdict();
            eprintln!(
                "scenario {name}: crashvmm exit code {code} after {:.1} s via {}: {}; outputs in {}",
                o.elapsed.as_secs_f64(),
                o.mode.as_str(),
                match &verdict {
                    Ok(()) => "as declared (exit code, trigger, events, console)".to_string(),
                    Err(why) => format!("FAILED: {why}"),
                },
                o.out.display()
            );
            if verdict.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("scenario {name}: error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
