//! The scheduler's durable state, in an embedded SQLite database (`rusqlite`, bundled): the job
//! id counter (ids never repeat across restarts), the start count (task ids carry it, so a
//! report about a task of an earlier run never matches a new one), the jobs admitted and not
//! ended, the ended jobs' outcomes (the history `spate status` shows), and the measured
//! capacity fits (so a restarted scheduler plans on what it measured).
//!
//! A live job keeps what a restarted scheduler needs to resume it: its spec and input names,
//! its chunk size, and once its rings are allocated, each stream's consumer, key, hand-off
//! socket and backing (what landed lives in the consumers' rings, which they report when they
//! rejoin). A job that was still allocating its rings is not resumed: the next start ends it
//! as aborted, with that reason, so its outcome is recorded as what happened rather than lost.
//!
//! The database is in WAL mode with `synchronous = NORMAL`: a commit survives a crash of the
//! scheduler (the log is in the OS's page cache); a power loss may lose the last commits. The
//! directory is owner-only (0700), the files 0600.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::capacity::SavedFit;

/// Version of the schema this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;
/// File name of the database inside the state directory.
pub const DB_FILE: &str = "scheduler.db";

/// Why the state could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory or file could not be created or opened.
    #[error(
        "cannot open the scheduler state in {}: {source}; give --state-dir a directory the \
         scheduler may write (it is made owner-only)",
        dir.display()
    )]
    Open {
        /// The state directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The database was written by a newer spate.
    #[error(
        "the scheduler state {} has schema version {found}, newer than this spate's \
         {SCHEMA_VERSION}: run the newer spate, or move the file away to start afresh (job \
         ids then start again at 1 and the history is gone)",
        path.display()
    )]
    Newer {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
    },
    /// Not a database, or a damaged one.
    #[error(
        "the scheduler state {} is not a spate state database or is damaged ({detail}): move \
         it away to start afresh (job ids then start again at 1 and the history is gone)",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// A statement failed.
    #[error("scheduler state: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// A job that ended, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedEnd {
    /// The job id.
    pub id: u64,
    /// Its name ("" when none).
    pub name: String,
    /// "completed", "cancelled" or "aborted".
    pub outcome: String,
    /// The abort reason ("" otherwise).
    pub reason: String,
    /// Output bytes in all.
    pub total: u64,
    /// Bytes delivered in order.
    pub delivered: u64,
    /// Bytes read.
    pub read: u64,
    /// Milliseconds from submission to the end.
    pub duration_ms: u64,
}

/// A job admitted and not ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedJob {
    /// The job id.
    pub id: u64,
    /// Its name ("" when none).
    pub name: String,
    /// Output bytes in all.
    pub total: u64,
    /// Its spec as submitted (TOML) and the input names the submitter added.
    pub spec: String,
    /// See `spec`.
    pub inputs: Vec<String>,
    /// Set once its rings are allocated: what resuming it needs.
    pub resume: Option<SavedResume>,
}

/// What a restarted scheduler needs to resume a job whose rings were allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedResume {
    /// Lines per chunk (the chunk grid its rings were filled on).
    pub chunk_lines: u64,
    /// It was running (Ready taken), not waiting for Ready.
    pub running: bool,
    /// Per stream, in order.
    pub streams: Vec<SavedStream>,
}

/// A stream's ring, as its consumer allocated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedStream {
    /// The consumer's node name.
    pub node: String,
    /// The ring's key.
    pub key: u128,
    /// The consumer's hand-off socket.
    pub handoff: String,
    /// How the ring is backed (`hugetlb`, `thp`, `plain`).
    pub backing: String,
}

/// Everything loaded at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The id the next job gets.
    pub next_job: u64,
    /// How many times a scheduler started on this state, this start included.
    pub starts: u64,
    /// Jobs admitted and not ended when the last scheduler stopped.
    pub live: Vec<SavedJob>,
    /// Ended jobs, oldest first.
    pub ended: Vec<SavedEnd>,
}

/// The open database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    keep_ended: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn split_inputs(s: &str) -> Vec<String> {
    s.split('\n')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn corrupt(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

impl Store {
    /// Opens (creating) `dir/scheduler.db`, checks its version and integrity, and counts this
    /// start. Keeps at most `keep_ended` ended jobs.
    pub fn open(dir: &Path, keep_ended: usize) -> Result<Store, StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let open_err = |source| StoreError::Open {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(open_err)?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|e| corrupt(&path, e))?;
        // A file that is not a database fails here, at its first read.
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| corrupt(&path, e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Newer {
                path,
                found: version,
            });
        }
        let ok: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| corrupt(&path, e))?;
        if ok != "ok" {
            return Err(StoreError::Corrupt { path, detail: ok });
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| corrupt(&path, e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        if version == 0 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS live (
                     id INTEGER PRIMARY KEY, name TEXT NOT NULL, total INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS ended (
                     id INTEGER PRIMARY KEY, name TEXT NOT NULL, outcome TEXT NOT NULL,
                     reason TEXT NOT NULL, total INTEGER NOT NULL, delivered INTEGER NOT NULL,
                     read INTEGER NOT NULL, duration_ms INTEGER NOT NULL);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            // Version 2: what resuming a live job needs. Jobs a version-1 scheduler left live
            // have none of it, and are ended as aborted at this start.
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE live ADD COLUMN spec TEXT NOT NULL DEFAULT '';
                 ALTER TABLE live ADD COLUMN inputs TEXT NOT NULL DEFAULT '';
                 ALTER TABLE live ADD COLUMN chunk_lines INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE live ADD COLUMN phase TEXT NOT NULL DEFAULT 'allocating';
                 CREATE TABLE IF NOT EXISTS live_streams (
                     job INTEGER NOT NULL, stream INTEGER NOT NULL, node TEXT NOT NULL,
                     key TEXT NOT NULL, handoff TEXT NOT NULL, backing TEXT NOT NULL,
                     PRIMARY KEY (job, stream));
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        // The scheduler's measured capacities (kept since schema 2; made where missing).
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS capacity (
                 node TEXT NOT NULL, what TEXT NOT NULL, link INTEGER NOT NULL,
                 fast TEXT NOT NULL, slow TEXT NOT NULL, PRIMARY KEY (node, what, link));",
        )?;
        for f in [
            path.clone(),
            dir.join(format!("{DB_FILE}-wal")),
            dir.join(format!("{DB_FILE}-shm")),
        ] {
            if f.exists() {
                let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600));
            }
        }
        let mut s = Store {
            conn,
            path,
            keep_ended,
        };
        let starts = s.meta("starts")?.unwrap_or(0) + 1;
        s.set_meta("starts", starts)?;
        Ok(s)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .map(|v| v as u64))
    }

    fn set_meta(&mut self, key: &str, value: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value as i64],
        )?;
        Ok(())
    }

    /// Everything stored.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut q = self.conn.prepare(
            "SELECT id, name, total, spec, inputs, chunk_lines, phase FROM live ORDER BY id",
        )?;
        let rows = q
            .query_map([], |r| {
                Ok((
                    SavedJob {
                        id: r.get::<_, i64>(0)? as u64,
                        name: r.get(1)?,
                        total: r.get::<_, i64>(2)? as u64,
                        spec: r.get(3)?,
                        inputs: split_inputs(&r.get::<_, String>(4)?),
                        resume: None,
                    },
                    r.get::<_, i64>(5)? as u64,
                    r.get::<_, String>(6)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut q = self.conn.prepare(
            "SELECT node, key, handoff, backing FROM live_streams WHERE job = ?1 ORDER BY stream",
        )?;
        let mut live = Vec::with_capacity(rows.len());
        for (mut j, chunk_lines, phase) in rows {
            if phase != "allocating" && chunk_lines > 0 {
                let streams = q
                    .query_map([j.id as i64], |r| {
                        let key: String = r.get(1)?;
                        Ok(SavedStream {
                            node: r.get(0)?,
                            key: u128::from_str_radix(&key, 16).unwrap_or(0),
                            handoff: r.get(2)?,
                            backing: r.get(3)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                j.resume = Some(SavedResume {
                    chunk_lines,
                    running: phase == "running",
                    streams,
                });
            }
            live.push(j);
        }
        let mut q = self.conn.prepare(
            "SELECT id, name, outcome, reason, total, delivered, read, duration_ms FROM ended \
             ORDER BY id",
        )?;
        let ended = q
            .query_map([], |r| {
                Ok(SavedEnd {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    outcome: r.get(2)?,
                    reason: r.get(3)?,
                    total: r.get::<_, i64>(4)? as u64,
                    delivered: r.get::<_, i64>(5)? as u64,
                    read: r.get::<_, i64>(6)? as u64,
                    duration_ms: r.get::<_, i64>(7)? as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let after = |ids: &mut dyn Iterator<Item = u64>| ids.map(|i| i + 1).max().unwrap_or(1);
        let next_job = self
            .meta("next_job")?
            .unwrap_or(1)
            .max(after(&mut ended.iter().map(|e| e.id)))
            .max(after(&mut live.iter().map(|j| j.id)));
        Ok(Loaded {
            next_job,
            starts: self.meta("starts")?.unwrap_or(1),
            live,
            ended,
        })
    }

    /// Records an admitted job; the next job id is `next_job` (or more).
    pub fn admit(&mut self, j: &SavedJob, next_job: u64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO live (id, name, total, spec, inputs, chunk_lines, phase)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, 'allocating')",
            params![
                j.id as i64,
                j.name,
                j.total as i64,
                j.spec,
                j.inputs.join("\n")
            ],
        )?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('next_job', ?1)
             ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
            [next_job as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records that a live job's rings are allocated (on `streams`, in order) on a grid of
    /// `chunk_lines`: from now on a restarted scheduler resumes it.
    pub fn accepted(
        &mut self,
        id: u64,
        chunk_lines: u64,
        streams: &[SavedStream],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE live SET chunk_lines = ?2, phase = 'accepted' WHERE id = ?1",
            params![id as i64, chunk_lines as i64],
        )?;
        tx.execute("DELETE FROM live_streams WHERE job = ?1", [id as i64])?;
        for (i, st) in streams.iter().enumerate() {
            tx.execute(
                "INSERT INTO live_streams (job, stream, node, key, handoff, backing)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id as i64,
                    i as i64,
                    st.node,
                    format!("{:032x}", st.key),
                    st.handoff,
                    st.backing
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces the kept capacity estimates with `fits`.
    pub fn save_capacities(&mut self, fits: &[SavedFit]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM capacity", [])?;
        for f in fits {
            let text = |a: &[f64; 6]| {
                a.iter()
                    .map(|v| format!("{v:e}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            // link: 0 compute, 1 remote link, 2 local link.
            let kind = match f.link {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            };
            tx.execute(
                "INSERT INTO capacity (node, what, link, fast, slow) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![f.node, f.what, kind, text(&f.fast), text(&f.slow)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The kept capacity estimates (rows that do not parse are skipped).
    pub fn capacities(&self) -> Result<Vec<SavedFit>, StoreError> {
        let parse = |s: &str| -> Option<[f64; 6]> {
            let v: Vec<f64> = s
                .split(' ')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            v.try_into().ok()
        };
        let mut q = self
            .conn
            .prepare("SELECT node, what, link, fast, slow FROM capacity ORDER BY node, what")?;
        let rows = q
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(node, what, kind, fast, slow)| {
                Some(SavedFit {
                    node,
                    what,
                    link: match kind {
                        0 => None,
                        1 => Some(false),
                        _ => Some(true),
                    },
                    fast: parse(&fast)?,
                    slow: parse(&slow)?,
                })
            })
            .collect())
    }

    /// Records that a live job started running (its Ready was taken).
    pub fn started(&mut self, id: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE live SET phase = 'running' WHERE id = ?1 AND phase = 'accepted'",
            [id as i64],
        )?;
        Ok(())
    }

    /// Records how a job ended (it is no longer live), forgetting the oldest ended jobs past
    /// the bound.
    pub fn end(&mut self, e: &SavedEnd) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM live WHERE id = ?1", [e.id as i64])?;
        tx.execute("DELETE FROM live_streams WHERE job = ?1", [e.id as i64])?;
        tx.execute(
            "INSERT OR REPLACE INTO ended (id, name, outcome, reason, total, delivered, read,
             duration_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                e.id as i64,
                e.name,
                e.outcome,
                e.reason,
                e.total as i64,
                e.delivered as i64,
                e.read as i64,
                e.duration_ms as i64,
            ],
        )?;
        tx.execute(
            "DELETE FROM ended WHERE id NOT IN (SELECT id FROM ended ORDER BY id DESC LIMIT ?1)",
            [self.keep_ended as i64],
        )?;
        // Ids never go back, even with every job ended and forgotten.
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('next_job', ?1)
             ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
            [(e.id + 1) as i64],
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spate-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn job(id: u64) -> SavedJob {
        SavedJob {
            id,
            name: format!("job{id}"),
            total: 100,
            spec: format!("name = \"job{id}\"\n"),
            inputs: vec!["a.png".into(), "b.png".into()],
            resume: None,
        }
    }

    fn end(id: u64) -> SavedEnd {
        SavedEnd {
            id,
            name: String::new(),
            outcome: "aborted".into(),
            reason: "output node \"c\" crashed".into(),
            total: 100,
            delivered: 40,
            read: 20,
            duration_ms: 1500,
        }
    }

    #[test]
    fn live_jobs_history_and_ids_survive_a_reopen() {
        let d = dir("reopen");
        {
            let mut s = Store::open(&d, 2).unwrap();
            s.admit(&job(1), 2).unwrap();
            s.admit(&job(2), 3).unwrap();
            s.end(&end(1)).unwrap();
        }
        let s = Store::open(&d, 2).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.starts, 2);
        assert_eq!(l.next_job, 3);
        assert_eq!(l.live, vec![job(2)]);
        assert_eq!(l.ended, vec![end(1)]);
        drop(s);
        // The history is bounded: the oldest go.
        let mut s = Store::open(&d, 2).unwrap();
        for id in 3..6 {
            s.end(&end(id)).unwrap();
        }
        let l = s.load().unwrap();
        assert_eq!(l.starts, 3);
        assert_eq!(l.ended.iter().map(|e| e.id).collect::<Vec<_>>(), vec![4, 5]);
        // Ids never go back, even with every job ended and forgotten.
        assert_eq!(l.next_job, 6);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_live_job_keeps_what_resuming_it_needs() {
        let d = dir("resume");
        let streams = vec![
            SavedStream {
                node: "c0".into(),
                key: u128::MAX - 7,
                handoff: "/run/spate/c0.handoff".into(),
                backing: "hugetlb".into(),
            },
            SavedStream {
                node: "c1".into(),
                key: 42,
                handoff: "/run/spate/c1.handoff".into(),
                backing: "plain".into(),
            },
        ];
        let mut want = job(2);
        {
            let mut s = Store::open(&d, 2).unwrap();
            s.admit(&job(2), 3).unwrap();
            // Allocating: nothing to resume from yet.
            assert_eq!(s.load().unwrap().live, vec![job(2)]);
            s.accepted(2, 7, &streams).unwrap();
        }
        let mut s = Store::open(&d, 2).unwrap();
        want.resume = Some(SavedResume {
            chunk_lines: 7,
            running: false,
            streams: streams.clone(),
        });
        assert_eq!(s.load().unwrap().live, vec![want.clone()]);
        s.started(2).unwrap();
        want.resume.as_mut().unwrap().running = true;
        assert_eq!(s.load().unwrap().live, vec![want]);
        // Ended: neither the job nor its streams stay.
        s.end(&end(2)).unwrap();
        assert!(s.load().unwrap().live.is_empty());
        s.admit(&job(2), 3).unwrap();
        assert_eq!(s.load().unwrap().live, vec![job(2)]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn capacity_estimates_are_kept_exactly() {
        let d = dir("caps");
        let fits = vec![
            SavedFit {
                node: "p0".into(),
                what: "rip".into(),
                link: None,
                fast: [0.9, 1.5e6, 0.03, 2.25e12, 4.5e4, 12.0],
                slow: [0.99, 1.1e6, 0.021, 1.3e12, 2.1e4, 40.0],
            },
            SavedFit {
                node: "p0".into(),
                what: "c0".into(),
                link: Some(true),
                fast: [1.0, 3.0, 4.0, 9.0, 12.0, 3.0],
                slow: [0.1, 0.2, 1.0 / 3.0, 0.4, 0.5, 1.0],
            },
        ];
        {
            let mut s = Store::open(&d, 2).unwrap();
            s.save_capacities(&fits).unwrap();
            s.save_capacities(&fits).unwrap();
        }
        let s = Store::open(&d, 2).unwrap();
        let mut got = s.capacities().unwrap();
        got.sort_by(|a, b| a.what.cmp(&b.what));
        let mut want = fits;
        want.sort_by(|a, b| a.what.cmp(&b.what));
        assert_eq!(got, want);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_version_1_state_is_upgraded_and_its_live_jobs_are_not_resumable() {
        let d = dir("v1");
        std::fs::create_dir_all(&d).unwrap();
        {
            let c = Connection::open(d.join(DB_FILE)).unwrap();
            c.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 CREATE TABLE live (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                     total INTEGER NOT NULL);
                 CREATE TABLE ended (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                     outcome TEXT NOT NULL, reason TEXT NOT NULL, total INTEGER NOT NULL,
                     delivered INTEGER NOT NULL, read INTEGER NOT NULL,
                     duration_ms INTEGER NOT NULL);
                 INSERT INTO live VALUES (9, 'old', 100);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let s = Store::open(&d, 2).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.next_job, 10);
        assert_eq!(
            l.live,
            vec![SavedJob {
                id: 9,
                name: "old".into(),
                total: 100,
                spec: String::new(),
                inputs: vec![],
                resume: None,
            }]
        );
        let v: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_directory_and_database_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("mode");
        let _s = Store::open(&d, 2).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join(DB_FILE)), 0o600);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_newer_or_foreign_file_is_refused_saying_what_to_do() {
        let d = dir("newer");
        {
            let s = Store::open(&d, 2).unwrap();
            s.conn.pragma_update(None, "user_version", 9).unwrap();
        }
        let e = Store::open(&d, 2).unwrap_err().to_string();
        assert!(
            e.contains("schema version 9, newer than this spate's 2"),
            "{e}"
        );
        assert!(e.contains("move the file away"), "{e}");
        let d2 = dir("foreign");
        std::fs::create_dir_all(&d2).unwrap();
        std::fs::write(
            d2.join(DB_FILE),
            b"this is not a database at all, just some text",
        )
        .unwrap();
        let e = Store::open(&d2, 2).unwrap_err().to_string();
        assert!(
            e.contains("is not a spate state database or is damaged"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&d2);
    }
}
