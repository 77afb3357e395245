//! Helpers shared by the core tests.
#![allow(dead_code)]

use spate_scheduler::core::{Command, Event, JobEnd, NodeId, NodeInfo, Roles, Scheduler, TaskId};
use spate_scheduler::policy::LoadBalance;

pub fn info(name: &str, host: &str, producer: bool, consumer: bool) -> NodeInfo {
    NodeInfo {
        name: name.to_string(),
        host: host.to_string(),
        roles: Roles { producer, consumer },
        cores: 2,
        capacity: 0,
        interfaces: vec![],
        ..NodeInfo::default()
    }
}

pub const P1: NodeId = NodeId(1);
pub const P2: NodeId = NodeId(2);
pub const P3: NodeId = NodeId(3);
pub const C1: NodeId = NodeId(11);
pub const C2: NodeId = NodeId(12);

/// A load-balance scheduler and its clock; every event is followed by an invariants check.
pub struct T {
    pub s: Scheduler,
    pub now: u64,
}

impl T {
    pub fn new() -> T {
        T {
            s: Scheduler::new(Box::new(LoadBalance::default())),
            now: 0,
        }
    }
    pub fn ev(&mut self, e: Event) -> Vec<Command> {
        let out = self.s.handle(self.now, e);
        self.s.check_invariants().unwrap();
        out
    }
}

/// The tasks handed out: (task, chunk index).
pub fn tasks(out: &[Command]) -> Vec<(TaskId, u64)> {
    out.iter()
        .filter_map(|c| match c {
            Command::Compute { task, chunk, .. } => Some((*task, chunk.index)),
            _ => None,
        })
        .collect()
}

/// How a job ended, if it did.
pub fn ended(out: &[Command]) -> Option<JobEnd> {
    out.iter().find_map(|c| match c {
        Command::JobEnded { end, .. } => Some(end.clone()),
        _ => None,
    })
}
