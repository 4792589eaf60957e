//! One module per subcommand: its flags (`Args`) and what it does (`run`).
//! `cbs-host` has `run` and `load`; `cbs` has the rest.

pub mod accounts;
pub mod apply;
pub mod audit;
pub mod backup;
pub mod bench;
pub mod build;
pub mod call;
pub mod compliance;
pub mod console;
pub mod contract;
pub mod deploy;
pub mod deps;
pub mod dlq;
pub mod export;
pub mod flows;
pub mod gateway;
pub mod keygen;
pub mod load;
pub mod login;
pub mod ls;
pub mod new;
pub mod policy;
pub mod ps;
pub mod publish;
pub mod pull;
pub mod push;
pub mod record;
pub mod replay;
pub mod restore;
pub mod rollback;
pub mod run;
pub mod saga;
pub mod search;
pub mod show;
pub mod undeploy;
