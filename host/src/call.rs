//! One call: send an envelope as a request, wait for the reply, read it as
//! an envelope. What the host, the CLI and the tests use to reach a cell.

use std::time::Duration;

use serde_json::value::RawValue;

use crate::bus::BodyBus;
use crate::envelope::codec::{from_message, to_message};
use crate::envelope::{BusError, Envelope};

/// Sends `envelope` and returns the reply envelope (which may carry an
/// error); fails with the bus's error when no reply comes.
pub async fn request(
    bus: &dyn BodyBus,
    envelope: &Envelope,
    timeout: Duration,
) -> Result<Envelope, BusError> {
    let reply = bus.request(to_message(envelope), timeout).await?;
    from_message(&reply)
}

/// Sends `envelope` and returns the reply's payload, or the error the reply
/// or the bus gave.
pub async fn call(
    bus: &dyn BodyBus,
    envelope: &Envelope,
    timeout: Duration,
) -> Result<Box<RawValue>, BusError> {
    request(bus, envelope, timeout).await?.into_result()
}
