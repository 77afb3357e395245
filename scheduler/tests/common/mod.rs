//! Helpers shared by the core tests.
#![allow(dead_code)]

use spate_scheduler::core::{NodeId, NodeInfo, Roles};

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
