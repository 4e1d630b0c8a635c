//! The command line, built from the option table, and the values it and the
//! environment give. Every value stays text here: `config.rs` parses flag,
//! environment and file values with the same code, so an error reads the same
//! from any source.

use std::collections::BTreeMap;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use super::options::{Opt, OptionSpec, OPTIONS};
use super::Given;

/// The text after the options in `--help`.
const AFTER_HELP: &str = "Every option can also be set in the environment as PORTICO_<OPTION> \
    (e.g. PORTICO_TLS_DIR); a repeatable option's variable takes its values separated by \
    commas: PORTICO_TLS_DIR=/etc/tls/a,/etc/tls/b. Precedence: flag, environment, --config \
    file, default. docs/reference.md has every option.";

/// The `check` subcommand's name.
pub const CHECK: &str = "check";
/// The `inject` subcommand's name.
pub const INJECT: &str = "inject";

/// portico's command line: every option of the table, `check` and `inject`.
pub fn command() -> Command {
    let check = Command::new(CHECK)
        .about("Load the configuration and every certificate, print a summary, exit 0 (or 2)");
    // main.rs hands `portico inject …` to inject's own parser before this one
    // runs: here it is only listed in `--help`, and reached when proxy options
    // come before it, which `Config::from_args` refuses whatever follows.
    let inject = Command::new(INJECT)
        .about(
            "Add portico to the workloads in Kubernetes manifests (FILE... or stdin) and \
             write them to stdout",
        )
        .disable_help_flag(true)
        .arg(
            Arg::new("rest")
                .num_args(0..)
                .trailing_var_arg(true)
                .allow_hyphen_values(true)
                .hide(true),
        );
    OPTIONS.iter().fold(
        Command::new("portico")
            .version(env!("CARGO_PKG_VERSION"))
            .about(env!("CARGO_PKG_DESCRIPTION"))
            .after_help(AFTER_HELP)
            .subcommand(check)
            .subcommand(inject),
        |cmd, spec| cmd.arg(arg(spec)),
    )
}

fn arg(spec: &OptionSpec) -> Arg {
    let arg = Arg::new(spec.name)
        .long(spec.name)
        .global(true)
        .value_name(spec.value_name)
        .help(spec.help_line())
        // For `--help` (which shows the variable and any value it holds) and
        // clap's refusal of a value that is not UTF-8; the value itself is
        // taken from the `env` that `given` is handed.
        .env(spec.env());
    if spec.repeatable {
        arg.action(ArgAction::Append).value_delimiter(',')
    } else {
        arg.action(ArgAction::Set)
    }
}

/// What the flags give, and for an option with no flag, its variable (`env`
/// looks one up).
pub(super) fn given(m: &ArgMatches, env: &dyn Fn(&str) -> Option<String>) -> BTreeMap<Opt, Given> {
    let mut out = BTreeMap::new();
    for spec in OPTIONS {
        if m.value_source(spec.name) == Some(ValueSource::CommandLine) {
            let values: Vec<String> = m
                .get_many::<String>(spec.name)
                .map(|v| v.cloned().collect())
                .unwrap_or_default();
            if !values.is_empty() {
                let origin = String::new();
                out.insert(spec.opt, Given { values, origin });
                continue;
            }
        }
        let var = spec.env();
        let Some(text) = env(&var) else { continue };
        let values: Vec<String> = if spec.repeatable {
            text.split(',').map(str::to_string).collect()
        } else {
            vec![text]
        };
        // A variable set to nothing (`PORTICO_LISTEN=`, or a Pod `env` entry
        // with `value: ""`) is unset: the file or the default applies, for a
        // scalar and for a list alike.
        if values.iter().all(|v| v.trim().is_empty()) {
            continue;
        }
        out.insert(
            spec.opt,
            Given {
                values,
                origin: var,
            },
        );
    }
    out
}
