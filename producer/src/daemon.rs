//! The producer's side of the control protocol, as a handler for the daemon's control loop:
//! Preload (fetch inputs from the scheduler's file service or a local path, build the kernel),
//! Compute+Expel pairs (one task, handed to the [`ProducerEngine`]), Unload.

use std::collections::HashMap;
use std::sync::Arc;

use spate_netlib::proto::{
    ChunkIndex, InputSource, InputSpec, JobGeometry, JobId, LineRange, Message, TaskId, Value,
};

use crate::engine::{ProducerEngine, Task};
use crate::kernel::Kernel;

/// Largest input a producer fetches into memory.
pub const MAX_INPUT: u64 = 4 << 30;

/// A job being preloaded.
#[derive(Debug)]
struct Loading {
    kernel: String,
    params: Value,
    geometry: JobGeometry,
    inputs: Vec<InputSpec>,
    next: usize,
    got: HashMap<String, Vec<u8>>,
    cur: Vec<u8>,
}

enum Slot {
    Loading(Box<Loading>),
    Ready(Arc<dyn Kernel>),
}

/// The producer role of a node daemon.
pub struct ProducerNode {
    engine: ProducerEngine,
    jobs: HashMap<JobId, Slot>,
    computes: HashMap<TaskId, (JobId, ChunkIndex, LineRange)>,
    /// Cancelled between their Compute and their Expel.
    cancelled: std::collections::HashSet<TaskId>,
}

impl std::fmt::Debug for ProducerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerNode")
            .field("jobs", &self.jobs.len())
            .field("computes", &self.computes.len())
            .finish()
    }
}

fn task_failed(task: TaskId, job: JobId, reason: String, retryable: bool) -> Message {
    Message::TaskFailed {
        task,
        job,
        reason,
        retryable,
    }
}

impl ProducerNode {
    /// Wrap started engines.
    pub fn new(engine: ProducerEngine) -> ProducerNode {
        ProducerNode {
            engine,
            jobs: HashMap::new(),
            computes: HashMap::new(),
            cancelled: std::collections::HashSet::new(),
        }
    }

    /// Forgets every job and task (after the scheduler was lost: the next one preloads and
    /// hands out again what it wants). Tasks already in the engine finish; their reports are
    /// stale to the next scheduler, which ignores them, and their chunks land idempotently.
    pub fn reset(&mut self) {
        for job in self.jobs.keys() {
            self.engine.forget_job(*job);
        }
        self.jobs.clear();
        self.computes.clear();
        self.cancelled.clear();
    }

    /// Jobs whose kernel is ready.
    pub fn ready_jobs(&self) -> Vec<JobId> {
        let mut v: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Ready(_)))
            .map(|(j, _)| *j)
            .collect();
        v.sort();
        v
    }

    /// Handle a scheduler message meant for producers: `Some(replies)`, or None when the
    /// message is not a producer's. Task results come later through the engine's outbox.
    pub fn handle(&mut self, msg: &Message) -> Option<Vec<Message>> {
        Some(match msg {
            Message::Preload {
                job,
                kernel,
                params,
                geometry,
                inputs,
            } => {
                if let Some(Slot::Ready(_)) = self.jobs.get(job) {
                    return Some(vec![Message::Preloaded { job: *job }]);
                }
                self.jobs.insert(
                    *job,
                    Slot::Loading(Box::new(Loading {
                        kernel: kernel.clone(),
                        params: params.clone(),
                        geometry: *geometry,
                        inputs: inputs.clone(),
                        next: 0,
                        got: HashMap::new(),
                        cur: Vec::new(),
                    })),
                );
                self.advance(*job)
            }
            Message::InputChunk {
                job,
                name,
                offset,
                data,
                last,
            } => self.on_chunk(*job, name, *offset, data, *last),
            Message::FetchFailed { job, name, reason } => {
                if !matches!(self.jobs.get(job), Some(Slot::Loading(_))) {
                    return Some(Vec::new());
                }
                self.jobs.remove(job);
                vec![Message::PreloadFailed {
                    job: *job,
                    reason: format!("input {name:?}: {reason}"),
                }]
            }
            Message::Compute {
                task,
                job,
                chunk,
                lines,
            } => {
                self.computes.insert(*task, (*job, *chunk, *lines));
                Vec::new()
            }
            Message::Expel {
                task,
                job,
                chunk,
                targets,
            } => self.expel(*task, *job, *chunk, targets),
            Message::Unload { job } => {
                self.jobs.remove(job);
                self.computes.retain(|_, c| c.0 != *job);
                self.engine.forget_job(*job);
                Vec::new()
            }
            Message::CancelTask { task, job } => {
                // Not handed to the engine yet (its Expel is still to come): forget it here.
                if self.computes.remove(task).is_some() {
                    self.cancelled.insert(*task);
                } else {
                    self.engine.cancel(*job, *task);
                }
                Vec::new()
            }
            _ => return None,
        })
    }

    fn expel(
        &mut self,
        task: TaskId,
        job: JobId,
        chunk: ChunkIndex,
        targets: &[spate_netlib::proto::ExpelTarget],
    ) -> Vec<Message> {
        if self.cancelled.remove(&task) {
            return Vec::new();
        }
        let Some((cjob, cchunk, lines)) = self.computes.remove(&task) else {
            let why = format!("Expel of task {task} came without its Compute");
            return vec![task_failed(task, job, why, true)];
        };
        if (cjob, cchunk) != (job, chunk) {
            let why = format!(
                "task {task}: Compute was for job {cjob} chunk {cchunk}, Expel for job {job} \
                 chunk {chunk}"
            );
            return vec![task_failed(task, job, why, true)];
        }
        let kernel = match self.jobs.get(&job) {
            Some(Slot::Ready(k)) => k.clone(),
            Some(Slot::Loading(_)) => {
                let why = format!("job {job} is still preloading on this producer");
                return vec![task_failed(task, job, why, true)];
            }
            None => {
                let why = format!("job {job} is not preloaded on this producer");
                return vec![task_failed(task, job, why, true)];
            }
        };
        let t = Task {
            task,
            job,
            chunk,
            lines,
            targets: targets.to_vec(),
            kernel,
        };
        match self.engine.submit(t) {
            Ok(()) => Vec::new(),
            Err(e) => vec![task_failed(task, job, e.to_string(), true)],
        }
    }

    fn on_chunk(
        &mut self,
        job: JobId,
        name: &str,
        offset: u64,
        data: &[u8],
        last: bool,
    ) -> Vec<Message> {
        let Some(Slot::Loading(l)) = self.jobs.get_mut(&job) else {
            return Vec::new();
        };
        let problem = match l.inputs.get(l.next) {
            Some(InputSpec {
                name: want,
                source: InputSource::FileService { size },
            }) if want == name => {
                if offset != l.cur.len() as u64 {
                    Some(format!(
                        "input {name:?}: chunk at offset {offset}, expected {}",
                        l.cur.len()
                    ))
                } else if l.cur.len() as u64 + data.len() as u64 > *size {
                    Some(format!(
                        "input {name:?}: more than the announced {size} bytes"
                    ))
                } else {
                    l.cur.extend_from_slice(data);
                    if last && l.cur.len() as u64 != *size {
                        Some(format!(
                            "input {name:?}: ended at {} of {size} bytes",
                            l.cur.len()
                        ))
                    } else {
                        None
                    }
                }
            }
            _ => Some(format!("input {name:?}: chunk not asked for")),
        };
        if let Some(reason) = problem {
            self.jobs.remove(&job);
            return vec![Message::PreloadFailed { job, reason }];
        }
        if !last {
            return Vec::new();
        }
        let data = std::mem::take(&mut l.cur);
        l.got.insert(name.to_string(), data);
        l.next += 1;
        self.advance(job)
    }

    /// Fetch the next inputs; build the kernel when all are in.
    fn advance(&mut self, job: JobId) -> Vec<Message> {
        let Some(Slot::Loading(l)) = self.jobs.get_mut(&job) else {
            return Vec::new();
        };
        while let Some(input) = l.inputs.get(l.next) {
            match &input.source {
                InputSource::LocalPath { path } => match std::fs::read(path) {
                    Ok(b) => {
                        l.got.insert(input.name.clone(), b);
                        l.next += 1;
                    }
                    Err(e) => {
                        let reason = format!(
                            "input {:?}: reading {} on this producer: {e}",
                            input.name,
                            path.display()
                        );
                        self.jobs.remove(&job);
                        return vec![Message::PreloadFailed { job, reason }];
                    }
                },
                InputSource::FileService { size } if *size > MAX_INPUT => {
                    let reason = format!(
                        "input {:?}: {size} bytes is more than a producer loads ({MAX_INPUT})",
                        input.name
                    );
                    self.jobs.remove(&job);
                    return vec![Message::PreloadFailed { job, reason }];
                }
                InputSource::FileService { size: 0 } => {
                    l.got.insert(input.name.clone(), Vec::new());
                    l.next += 1;
                }
                InputSource::FileService { size } => {
                    l.cur = Vec::with_capacity((*size).min(64 << 20) as usize);
                    return vec![Message::FetchInput {
                        job,
                        name: input.name.clone(),
                        offset: 0,
                        len: *size,
                    }];
                }
            }
        }
        let built = crate::factory::build(&l.kernel, &l.params, &l.geometry, &l.got);
        match built {
            Ok(k) => {
                tracing::info!(%job, kernel = k.name(), "preloaded");
                self.jobs.insert(job, Slot::Ready(Arc::from(k)));
                vec![Message::Preloaded { job }]
            }
            Err(e) => {
                self.jobs.remove(&job);
                vec![Message::PreloadFailed {
                    job,
                    reason: e.to_string(),
                }]
            }
        }
    }
}
