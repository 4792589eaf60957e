//! `cbs contract`: contract tools, one file per subcommand: `check` (does a
//! new contract keep the old one's promises?) and `test` (inputs generated
//! from the input schema, sent to the cell, each reply checked).

mod check;
mod test;

use std::process::ExitCode;

use clap::Subcommand;

/// Contract tools.
#[derive(Subcommand)]
pub enum ContractCommand {
    /// Does NEW keep the promises of OLD? Lists each breaking change by JSON
    /// pointer; exits 1 if there is one.
    ///
    /// Schema files (.json) are compared as input schemas (the new one must
    /// accept all the old one did) unless --output is given (the new one
    /// must allow nothing the old one forbade). Cell folders or bundles are
    /// compared on both.
    Check(check::CheckArgs),
    /// Test a cell against its contract with inputs generated from its
    /// input schema: valid ones across every branch (each enum value,
    /// oneOf/anyOf branch, optional field present and absent, bound at its
    /// edges) and invalid ones, each breaking one rule.
    ///
    /// A valid input must get a reply the output schema accepts (or the
    /// cell's own `invalid_input`); an invalid one must be refused with
    /// `invalid_input` or `contract_violation` naming the JSON pointer of
    /// the rule broken. A failing valid input is shrunk to a smaller one
    /// that fails the same way. Prints a line per case; exits 1 if one
    /// fails. Seeded: the same --seed sends the same inputs.
    ///
    /// Consumer expectations run too: what each --consumer, and with
    /// --nats each deployed consumer, expects of CELL ([[expects."CELL"]]:
    /// example requests and the reply fields read), and with --nats what
    /// CELL expects of the cells it calls.
    ///
    /// CELL is a cell folder (its component built) or a bundle, run in
    /// this process; with --nats, the cell served in the lattice is
    /// called instead (a folder or bundle then gives only the contract; a
    /// cell id takes the contract of the release deployed).
    Test(Box<test::TestArgs>),
}

pub async fn run(command: ContractCommand) -> anyhow::Result<ExitCode> {
    match command {
        ContractCommand::Check(args) => check::run(args),
        ContractCommand::Test(args) => test::run(*args).await,
    }
}
