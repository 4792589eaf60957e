//! The two command lines, `cbs-host` and `cbs`, as clap definitions (so
//! that tests can walk every subcommand) and what each runs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cbs_host::telemetry::Exporter;

use crate::args::LogArgs;
use crate::commands::{
    accounts, apply, audit, backup, bench, build, call, compliance, console, contract, deploy,
    deps, dlq, export, flows, gateway, keygen, load, login, ls, new, policy, ps, publish, pull,
    push, quota, record, replay, restore, rollback, run, saga, search, show, undeploy,
};

/// Runs CBS cells — WebAssembly components with JSON Schema contracts — and
/// bridges their envelopes to a bus (in process unless told otherwise).
#[derive(Parser)]
#[command(name = "cbs-host", version, propagate_version = true)]
pub struct HostCli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: HostCommand,
}

#[derive(Subcommand)]
pub enum HostCommand {
    Run(Box<run::RunArgs>),
    Load(load::LoadArgs),
    /// One worker process of the native Python pool (started by the host).
    #[cfg(feature = "python")]
    #[command(name = "python-worker", hide = true)]
    PythonWorker(crate::python_worker::WorkerArgs),
}

/// What `cbs-host` does with its parsed command line.
pub fn run_host(cli: HostCli) -> ExitCode {
    let exporter = match &cli.command {
        // Each host's spans carry its id (`service.instance.id`).
        HostCommand::Run(args) => Exporter {
            endpoint: args.otlp.clone(),
            service: "cbs-host".into(),
            instance: args.host_id(),
        },
        HostCommand::Load(_) => Exporter::default(),
        // A worker logs nothing itself: its stderr is the host's log.
        #[cfg(feature = "python")]
        HostCommand::PythonWorker(_) => Exporter::default(),
    };
    #[cfg(feature = "python")]
    if let HostCommand::PythonWorker(args) = cli.command {
        return crate::python_worker::run(args);
    }
    let telemetry = match cli.log.init("info", exporter) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let code = crate::block_on(tokio::runtime::Runtime::new(), async {
        match cli.command {
            HostCommand::Run(args) => run::run(*args).await,
            HostCommand::Load(args) => load::run(args).await,
            #[cfg(feature = "python")]
            HostCommand::PythonWorker(_) => unreachable!("handled before the async runtime"),
        }
    });
    telemetry.shutdown();
    code
}

/// Make, build, deploy and operate CBS cells: scaffold and bundle cells,
/// deploy them to a NATS cluster, call them, list and load-test them.
#[derive(Parser)]
#[command(name = "cbs", version, propagate_version = true)]
pub struct CbsCli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: CbsCommand,
}

#[derive(Subcommand)]
pub enum CbsCommand {
    New(new::NewArgs),
    Build(build::BuildArgs),
    Keygen(keygen::KeygenArgs),
    Push(push::PushArgs),
    Pull(pull::PullArgs),
    Search(search::SearchArgs),
    Show(show::ShowArgs),
    Deploy(deploy::DeployArgs),
    Deps(deps::DepsArgs),
    Apply(apply::ApplyArgs),
    Accounts(accounts::AccountsArgs),
    Export(export::ExportArgs),
    Rollback(rollback::RollbackArgs),
    Undeploy(undeploy::UndeployArgs),
    Ls(ls::LsArgs),
    Audit(audit::AuditArgs),
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    Compliance(compliance::ComplianceArgs),
    #[command(subcommand)]
    Quota(quota::QuotaCommand),
    Backup(backup::BackupArgs),
    Login(login::LoginArgs),
    Restore(restore::RestoreArgs),
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    Record(record::RecordArgs),
    Replay(replay::ReplayArgs),
    #[command(subcommand)]
    Saga(saga::SagaCommand),
    Publish(publish::PublishArgs),
    #[command(subcommand)]
    Contract(contract::ContractCommand),
    Call(call::CallArgs),
    Ps(ps::PsArgs),
    Flows(flows::FlowsArgs),
    Bench(bench::BenchArgs),
    Gateway(gateway::GatewayArgs),
    Console(console::ConsoleArgs),
}

impl CbsCommand {
    /// Whether the command is a server (it logs where it listens and
    /// serves many requests at once) rather than a client doing one thing.
    fn is_server(&self) -> bool {
        matches!(self, Self::Gateway(_) | Self::Console(_))
    }
}

/// What `cbs` does with its parsed command line.
pub fn run_cbs(cli: CbsCli) -> ExitCode {
    // A server says where it listens and what it serves.
    let level = if cli.command.is_server() {
        "info"
    } else {
        "warn"
    };
    let exporter = Exporter {
        endpoint: None,
        service: "cbs".into(),
        instance: cbs_host::host::default_id(),
    };
    let telemetry = match cli.log.init(level, exporter) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = if cli.command.is_server() {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let code = crate::block_on(runtime, async {
        match cli.command {
            CbsCommand::New(args) => new::run(args),
            CbsCommand::Build(args) => build::run(args).await,
            CbsCommand::Keygen(args) => keygen::run(args),
            CbsCommand::Push(args) => push::run(args).await,
            CbsCommand::Pull(args) => pull::run(args).await,
            CbsCommand::Search(args) => search::run(args).await,
            CbsCommand::Show(args) => show::run(args).await,
            CbsCommand::Deploy(args) => deploy::run(args).await,
            CbsCommand::Deps(args) => deps::run(args).await,
            CbsCommand::Apply(args) => apply::run(args).await,
            CbsCommand::Accounts(args) => accounts::run(args).await,
            CbsCommand::Export(args) => export::run(args).await,
            CbsCommand::Rollback(args) => rollback::run(args).await,
            CbsCommand::Undeploy(args) => undeploy::run(args).await,
            CbsCommand::Ls(args) => ls::run(args).await,
            CbsCommand::Audit(args) => audit::run(args).await,
            CbsCommand::Policy(command) => policy::run(command).await,
            CbsCommand::Compliance(args) => compliance::run(args).await,
            CbsCommand::Quota(command) => quota::run(command).await,
            CbsCommand::Backup(args) => backup::run(args).await,
            CbsCommand::Login(args) => login::run(args).await,
            CbsCommand::Restore(args) => restore::run(args).await,
            CbsCommand::Dlq(command) => dlq::run(command).await,
            CbsCommand::Record(args) => record::run(args).await,
            CbsCommand::Replay(args) => replay::run(args).await,
            CbsCommand::Saga(command) => saga::run(command).await,
            CbsCommand::Publish(args) => publish::run(args).await,
            CbsCommand::Contract(command) => contract::run(command).await,
            CbsCommand::Call(args) => call::run(args).await,
            CbsCommand::Ps(args) => ps::run(args).await,
            CbsCommand::Flows(args) => flows::run(args).await,
            CbsCommand::Bench(args) => bench::run(args).await,
            CbsCommand::Gateway(args) => gateway::run(args).await,
            CbsCommand::Console(args) => console::run(args).await,
        }
    });
    telemetry.shutdown();
    code
}
