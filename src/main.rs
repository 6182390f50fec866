//! The `agent-guard` binary: parse, run, and map the outcome to an exit code.

use std::process::ExitCode;

use agent_guard::Invocation;

/// Before `main`, before Rust's runtime sets SIGPIPE to ignored: the signal state the guard was
/// started with is read (the agent gets it back), and every signal is held until the guard's
/// handlers exist, so that none kills the guard in between.
#[used]
#[unsafe(link_section = ".init_array")]
static HOLD_SIGNALS_AT_START: extern "C" fn() = agent_guard::hold_signals_at_start;

fn main() -> ExitCode {
    let invocation = match agent_guard::load(std::env::args_os()) {
        Ok(invocation) => invocation,
        Err(err) => {
            agent_guard::release_signals();
            eprintln!("agent-guard: {err}");
            return ExitCode::from(agent_guard::GUARD_FAILED);
        }
    };
    if !matches!(invocation, Invocation::Run(_)) {
        // Only supervising installs handlers; anything else gets its signals as it was started.
        agent_guard::release_signals();
    }
    match invocation {
        Invocation::Ctl {
            socket,
            request,
            json,
        } => ExitCode::from(agent_guard::ctl(&socket, request, json)),
        Invocation::Drill(args) => ExitCode::from(agent_guard::drill(args)),
        Invocation::Doctor {
            config,
            settings,
            json,
        } => ExitCode::from(agent_guard::doctor(config, settings, json)),
        Invocation::Info(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Invocation::CheckConfig(config, settings) => {
            if let Some(program) = config.command.first()
                && let Err(err) = agent_guard::resolve(program)
            {
                eprintln!("agent-guard: {err}");
                return ExitCode::from(agent_guard::GUARD_FAILED);
            }
            print!("{}", config.describe(&settings));
            ExitCode::SUCCESS
        }
        Invocation::Run(config) => {
            agent_guard::init_logging(&config.name, config.log_format, &config.log_level);
            let code = match agent_guard::run(config) {
                Ok(status) => ExitCode::from(status.exit_code()),
                Err(err) => {
                    tracing::error!("{err}");
                    ExitCode::from(err.exit_code())
                }
            };
            // The log is written by a thread of its own: its last lines, within a bound.
            agent_guard::flush_logs(std::time::Duration::from_secs(2));
            code
        }
    }
}
