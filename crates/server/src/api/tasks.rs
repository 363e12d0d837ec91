//! Long work as tasks: `POST` answers 202 with `Location: /api/v1/tasks/ID` at once; the work
//! runs on a blocking thread reporting through `vmedia_io::Progress`; `GET /api/v1/tasks/ID`
//! shows its state, progress and, when done, its result (the library's typed report) or its
//! error (a problem document). Tasks live in memory: a restarted daemon has none.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use vmedia_io::Progress;

use super::{ApiState, Problem};
use crate::auth::Principal;
use crate::http::ErrorBody;

/// Finished tasks kept for clients to read; the oldest are forgotten beyond it.
pub const MAX_FINISHED_TASKS: usize = 1024;

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Running,
    Succeeded,
    Failed,
}

/// Work done out of the total (bytes, or items where bytes make no sense).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskProgress {
    pub done: u64,
    /// 0 while unknown.
    pub total: u64,
    pub phase: Option<String>,
}

/// `GET /api/v1/tasks/ID`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskInfo {
    pub id: String,
    /// `verify`, `upload`, ...
    pub kind: String,
    /// What it works on.
    pub target: String,
    /// Who started it.
    pub owner: String,
    pub state: TaskState,
    pub progress: TaskProgress,
    pub created: String,
    pub finished: Option<String>,
    /// The operation's report (e.g. `VerifyReport`, `AddReport`) when it succeeded.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<ErrorBody>,
}

struct Task {
    info: Mutex<TaskInfo>,
    /// The result so far of a task that publishes as it goes (a batch's per-system results).
    partial: Mutex<Option<serde_json::Value>>,
    done: AtomicU64,
    total: AtomicU64,
    phase: Mutex<Option<String>>,
}

impl Progress for Task {
    fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    fn advance(&self, done: u64) {
        self.done.fetch_add(done, Ordering::Relaxed);
    }
    fn phase(&self, name: &str) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.to_string());
    }
}

impl Task {
    fn snapshot(&self) -> TaskInfo {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if info.result.is_none() && info.state == TaskState::Running {
            info.result = self
                .partial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
        }
        info.progress = TaskProgress {
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            phase: self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        };
        info
    }
}

/// Tasks by id, and their ids in the order they started.
type Registry = (HashMap<String, Arc<Task>>, Vec<String>);

/// The daemon's tasks.
#[derive(Default)]
pub struct Tasks {
    tasks: Mutex<Registry>,
}

/// A task's work: blocking, reporting progress; a JSON report or a problem.
pub type Work = Box<dyn FnOnce(&dyn Progress) -> Result<serde_json::Value, Problem> + Send>;

/// Publishes a running task's result so far (shown as its `result` until it ends).
pub type Publish<'a> = &'a (dyn Fn(serde_json::Value) + Sync);
/// A task's work that publishes partial results as it goes.
pub type PublishingWork =
    Box<dyn FnOnce(&dyn Progress, Publish<'_>) -> Result<serde_json::Value, Problem> + Send>;

impl Tasks {
    /// Starts `work` and answers 202 with the task.
    pub fn start(&self, kind: &str, target: &str, owner: &Principal, work: Work) -> Response {
        self.start_publishing(
            kind,
            target,
            owner,
            Box::new(move |progress, _| work(progress)),
        )
    }

    /// `start` for work that publishes its result so far while it runs.
    pub fn start_publishing(
        &self,
        kind: &str,
        target: &str,
        owner: &Principal,
        work: PublishingWork,
    ) -> Response {
        let mut bytes = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        let id = hex::encode(bytes);
        let task = Arc::new(Task {
            info: Mutex::new(TaskInfo {
                id: id.clone(),
                kind: kind.to_string(),
                target: target.to_string(),
                owner: owner.name.clone(),
                state: TaskState::Running,
                progress: TaskProgress {
                    done: 0,
                    total: 0,
                    phase: None,
                },
                created: jiff::Timestamp::now().to_string(),
                finished: None,
                result: None,
                error: None,
            }),
            partial: Mutex::new(None),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            phase: Mutex::new(None),
        });
        {
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            let (map, order) = &mut *tasks;
            // Forget the oldest finished tasks beyond the bound; running ones stay.
            while order.len() >= MAX_FINISHED_TASKS {
                let Some(pos) = order.iter().position(|id| {
                    map.get(id)
                        .is_none_or(|t| t.snapshot().state != TaskState::Running)
                }) else {
                    break;
                };
                let old = order.remove(pos);
                map.remove(&old);
            }
            map.insert(id.clone(), Arc::clone(&task));
            order.push(id.clone());
        }
        let runner = Arc::clone(&task);
        tokio::task::spawn_blocking(move || {
            let publish = |value: serde_json::Value| {
                *runner.partial.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
            };
            let outcome = work(runner.as_ref(), &publish);
            let mut info = runner.info.lock().unwrap_or_else(|p| p.into_inner());
            info.finished = Some(jiff::Timestamp::now().to_string());
            match outcome {
                Ok(result) => {
                    info.state = TaskState::Succeeded;
                    info.result = Some(result);
                }
                Err(problem) => {
                    info.state = TaskState::Failed;
                    info.error = Some(ErrorBody::new(problem.status, &problem.detail));
                }
            }
        });
        let location = format!("/api/v1/tasks/{id}");
        (
            StatusCode::ACCEPTED,
            [(header::LOCATION, location)],
            Json(task.snapshot()),
        )
            .into_response()
    }

    pub fn get(&self, id: &str) -> Option<TaskInfo> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.0.get(id).map(|t| t.snapshot())
    }

    pub fn list(&self) -> Vec<TaskInfo> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks
            .1
            .iter()
            .filter_map(|id| tasks.0.get(id))
            .map(|t| t.snapshot())
            .collect()
    }
}

/// May `who` read a task `owner` started? Its owner and administrators; a task's target and
/// result name items and systems its owner was allowed, so nobody else sees them.
fn may_read(who: &Principal, owner: &str) -> bool {
    who.role.may_administer() || who.name == owner
}

/// One task: its owner's, or any for an administrator; another user's task answers 404 as a
/// missing one does (its existence does not leak).
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "The task id from a 202's Location")),
    responses((status = 200, body = TaskInfo),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn task_show(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    match state.tasks.get(&id) {
        Some(info) if may_read(&who, &info.owner) => Ok(Json(info).into_response()),
        _ => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no such task: {id}"),
        )),
    }
}

/// The tasks this daemon ran since it started, oldest first: the caller's own, or every
/// task for an administrator.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks",
    responses((status = 200, body = Vec<TaskInfo>)))]
pub async fn tasks_list(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
) -> Response {
    let mut tasks = state.tasks.list();
    tasks.retain(|t| may_read(&who, &t.owner));
    Json(tasks).into_response()
}
