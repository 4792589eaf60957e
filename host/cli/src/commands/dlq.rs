//! `cbs dlq`: the dead letters of a durable cell — list, show, replay.

use std::process::ExitCode;

use anyhow::Context as _;
use cbs_host::durable;
use cbs_host::manifest::check_cell_id;
use clap::{Args, Subcommand};

use crate::args::NatsArgs;
use crate::table::{print_listing, Table};

/// Dead letters of a durable cell: messages that failed for good, or
/// `max_deliver` times, kept in the JetStream stream CBS_DLQ with their
/// error. A letter too large for CBS_DLQ (the server's max_payload) is
/// kept without its message, which stays in the cell's stream: `ls`
/// marks it, `replay` fetches it from there.
#[derive(Subcommand)]
pub enum DlqCommand {
    /// List a cell's dead letters, oldest first.
    Ls(LsArgs),
    /// Print one dead letter (JSON): the message, its error, deliveries.
    Show(ShowArgs),
    /// Publish dead letters again to the subject they came from (deploy a
    /// fix first) and remove them from the dead-letter stream; a letter
    /// kept without its message replays the original from the cell's
    /// stream (and removes it there), or says why it cannot.
    Replay(ReplayArgs),
}

#[derive(Args)]
pub struct LsArgs {
    /// The cell id, e.g. orders.place.
    cell_id: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Args)]
pub struct ShowArgs {
    /// The cell id.
    cell_id: String,
    /// The dead letter's sequence (from `cbs dlq ls`).
    seq: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// The cell id.
    cell_id: String,
    /// Sequences to replay (from `cbs dlq ls`).
    #[arg(required_unless_present = "all")]
    seq: Vec<u64>,
    /// Replay every dead letter of the cell.
    #[arg(long, conflicts_with = "seq")]
    all: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::Ls(args) => ls(args).await,
        DlqCommand::Show(args) => show(args).await,
        DlqCommand::Replay(args) => replay(args).await,
    }
}

async fn jetstream(cell: &str, nats: &NatsArgs) -> anyhow::Result<async_nats::jetstream::Context> {
    check_cell_id(cell)?;
    let bus = nats.connect_client().await?;
    Ok(async_nats::jetstream::new(bus.client().clone()))
}

async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let js = jetstream(&args.cell_id, &args.nats).await?;
    let letters = durable::dead_letters(&js, &args.cell_id).await?;
    print_listing(
        args.json,
        &letters,
        |(seq, letter)| serde_json::json!({"seq": seq, "letter": letter}),
        &format!("no dead letters for {}", args.cell_id),
        table,
    )?;
    Ok(ExitCode::SUCCESS)
}

fn table(letters: &[(u64, durable::DeadLetter)]) -> Table {
    let mut table = Table::new(["SEQ", "DELIVERED", "ERROR", "MESSAGE"]);
    for (seq, letter) in letters {
        let error = format!("{}: {}", letter.error.code, letter.error.message);
        table.row([
            seq.to_string().as_str(),
            &letter.delivered.to_string(),
            &error,
            &message_column(letter),
        ]);
    }
    table
}

/// The envelope id, or where a letter kept without its message has it.
fn message_column(letter: &durable::DeadLetter) -> String {
    if letter.body_in_original {
        return format!(
            "(too large: body in {} seq {})",
            letter.stream, letter.stream_seq
        );
    }
    letter.message["id"]
        .as_str()
        .unwrap_or("(not an envelope)")
        .to_owned()
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let js = jetstream(&args.cell_id, &args.nats).await?;
    let letters = durable::dead_letters(&js, &args.cell_id).await?;
    let (_, letter) = letters
        .iter()
        .find(|(seq, _)| *seq == args.seq)
        .with_context(|| {
            format!(
                "cell {} has no dead letter {} (see `cbs dlq ls`)",
                args.cell_id, args.seq
            )
        })?;
    println!("{}", serde_json::to_string_pretty(letter)?);
    Ok(ExitCode::SUCCESS)
}

async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let js = jetstream(&args.cell_id, &args.nats).await?;
    let seqs = if args.all {
        durable::dead_letters(&js, &args.cell_id)
            .await?
            .into_iter()
            .map(|(seq, _)| seq)
            .collect()
    } else {
        args.seq
    };
    for seq in &seqs {
        let letter = durable::replay(&js, &args.cell_id, *seq).await?;
        println!("replayed {seq} to {}", letter.subject);
    }
    if seqs.is_empty() {
        println!("no dead letters for {}", args.cell_id);
    }
    Ok(ExitCode::SUCCESS)
}
