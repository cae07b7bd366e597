//! `ordo resync`: an operator's decisions about a secondary's replica, sent to its control
//! socket and answered once the secondary took them.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::control::{self, ControlReply, ControlRequest};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("decision").required(true))]
pub struct ResyncArgs {
    /// The secondary's control socket.
    #[arg(long)]
    control: PathBuf,
    /// Let a held resync that does not fit the journal window go on without a consistent
    /// image: the replica is INCONSISTENT until the resync's end point is applied.
    #[arg(long, group = "decision")]
    allow_inconsistent: bool,
    /// Let the next primary overwrite this replica whatever its history (DRBD's
    /// --discard-my-data): for a secondary that refused an unrelated history.
    #[arg(long, group = "decision")]
    discard_my_data: bool,
}

pub fn resync(args: &ResyncArgs) -> Result<ExitCode> {
    let request = if args.allow_inconsistent {
        ControlRequest::AllowInconsistent
    } else {
        ControlRequest::DiscardMyData
    };
    let reply = control::request(&args.control, &request, COMMAND_TIMEOUT)
        .with_context(|| format!("asking {}", args.control.display()))?;
    match reply {
        ControlReply::Done { message } => {
            writeln!(std::io::stdout().lock(), "{message}")?;
            Ok(ExitCode::SUCCESS)
        }
        ControlReply::Error { message } => bail!("refused: {message}"),
        other => bail!("unexpected reply: {other:?}"),
    }
}
