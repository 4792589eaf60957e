//! `cbs publish`: one event (an envelope) to a subject.

use std::process::ExitCode;

use anyhow::Context as _;
use cbs_host::bus::BodyBus;
use cbs_host::durable::{DurableLog, JetStreamLog};
use cbs_host::envelope::codec::to_message;
use cbs_host::envelope::Envelope;
use clap::Args;
use serde_json::value::RawValue;

use crate::args::NatsArgs;

/// Publish one event: an envelope with this payload, to a subject that
/// cells subscribe to (`[[subscribe]]`) or that a durable cell's stream
/// takes (`cbs-durable.<cell-id>` by default).
///
/// With --durable it returns once JetStream stored the event (the envelope
/// id is the Nats-Msg-Id: publishing again with the same --id is stored
/// once) and fails when no stream takes the subject.
///
/// Example: `cbs publish orders.created '{"sku":"apple","qty":2}' --durable`
#[derive(Args)]
pub struct PublishArgs {
    /// The subject, e.g. orders.created.
    subject: String,
    /// The payload (JSON).
    #[arg(default_value = "{}")]
    payload: String,
    /// Wait until JetStream stored it.
    #[arg(long)]
    durable: bool,
    /// The envelope id [default: a new UUIDv7]. Retrying a durable publish
    /// with the same id stores it once.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    #[command(flatten)]
    nats: NatsArgs,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    cbs_host::bus::subject::check(&args.subject, false)
        .with_context(|| format!("cannot publish to {:?}", args.subject))?;
    let payload = RawValue::from_string(args.payload).context("the payload is not JSON")?;
    let mut envelope = Envelope::new(args.subject.clone(), payload);
    if let Some(id) = args.id {
        envelope.id = id;
    }
    let bus = args.nats.connect_client().await?;
    if args.durable {
        let log = JetStreamLog::new(async_nats::jetstream::new(bus.client().clone()));
        let stored = log
            .publish(&args.subject, &envelope.id, envelope.to_vec().into())
            .await;
        return Ok(match stored {
            Ok(p) if p.duplicate => {
                println!(
                    "{} was stored before (sequence {}): not stored again",
                    envelope.id, p.seq
                );
                ExitCode::SUCCESS
            }
            Ok(p) => {
                println!("stored {} as sequence {}", envelope.id, p.seq);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: {}", e.code, e.message);
                ExitCode::FAILURE
            }
        });
    }
    bus.publish(to_message(&envelope)).await?;
    bus.flush().await?;
    println!("published {}", envelope.id);
    Ok(ExitCode::SUCCESS)
}
