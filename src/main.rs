//! The `agent-guard` binary: parse, run, and map the outcome to an exit code.

use std::process::ExitCode;

use agent_guard::config::{self, Invocation};
use agent_guard::{child, exit, logging};

fn main() -> ExitCode {
    let invocation = match config::load(std::env::args_os()) {
        Ok(invocation) => invocation,
        Err(err) => {
            eprintln!("agent-guard: {err}");
            return ExitCode::from(exit::GUARD_FAILED);
        }
    };
    match invocation {
        Invocation::Ctl {
            socket,
            request,
            json,
        } => ExitCode::from(agent_guard::ctl::run(&socket, &request, json)),
        Invocation::Drill(args) => ExitCode::from(agent_guard::drill::run(args)),
        Invocation::Info(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Invocation::CheckConfig(config, settings) => {
            if let Some(program) = config.command.first()
                && let Err(err) = child::resolve(program)
            {
                eprintln!("agent-guard: {err}");
                return ExitCode::from(exit::GUARD_FAILED);
            }
            print!("{}", config.describe(&settings));
            ExitCode::SUCCESS
        }
        Invocation::Run(config) => {
            logging::init(&config.name, config.log_format, &config.log_level);
            match agent_guard::run(config) {
                Ok(status) => ExitCode::from(status.exit_code()),
                Err(err) => {
                    tracing::error!("{err}");
                    ExitCode::from(exit::for_error(&err))
                }
            }
        }
    }
}
