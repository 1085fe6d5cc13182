//! `/containers/{id}/exec`, `/exec/{id}/start`, `/exec/{id}/json`.

use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::stream::{frame, StreamKind};
use super::types::{
    ExecCreateRequest, ExecInspect, ExecProcessConfig, ExecStartRequest, IdResponse,
};
use super::{blocking, json, json_body, stream_reply, Api, ApiError, ChannelBody, Reply};
use crate::manager::ExecSpec;

/// An exec instance, created by `POST /containers/{id}/exec`.
pub(super) struct ExecEntry {
    container_id: String,
    spec: ExecSpec,
    stdout: bool,
    stderr: bool,
    progress: Arc<Mutex<Progress>>,
}

#[derive(Default, Clone, Copy)]
struct Progress {
    started: bool,
    running: bool,
    pid: u32,
    exit_code: Option<i32>,
}

/// `POST /containers/{id}/exec`.
pub(super) async fn create(api: &Api, id: &str, req: Request<Incoming>) -> Reply {
    let r: ExecCreateRequest = json_body(req).await?;
    let cmd = r.cmd.filter(|c| !c.is_empty()).ok_or_else(|| {
        ApiError::BadRequest("no exec command specified: Cmd must not be empty".into())
    })?;
    if r.tty.unwrap_or(false) {
        return Err(ApiError::BadRequest(
            "exec with a terminal (-t) is not supported by berth yet".into(),
        ));
    }
    let m = api.manager().clone();
    let cid = id.to_owned();
    // As Docker: a container that is not running refuses the exec at
    // creation (409), so clients fail before starting anything.
    let container_id = blocking(move || {
        let info = m.inspect(&cid)?;
        if info.state.status != crate::manager::Status::Running {
            return Err(crate::manager::ManagerError::Conflict(format!(
                "container {} is not running",
                info.name
            ))
            .into());
        }
        Ok(info.id)
    })
    .await?;
    let exec_id = crate::manager::names::new_id()
        .map_err(|e| ApiError::Internal(format!("cannot make an exec id: {e}")))?;
    let entry = ExecEntry {
        container_id,
        spec: ExecSpec {
            cmd,
            env: r.env.unwrap_or_default(),
            user: r.user.filter(|u| !u.is_empty()),
            working_dir: r.working_dir.filter(|w| !w.is_empty()),
            stdin: r.attach_stdin.unwrap_or(false),
            tty: false,
        },
        stdout: r.attach_stdout.unwrap_or(true),
        stderr: r.attach_stderr.unwrap_or(true),
        progress: Arc::default(),
    };
    lock(api).insert(exec_id.clone(), entry);
    json(StatusCode::CREATED, &IdResponse { id: exec_id })
}

fn lock(api: &Api) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, ExecEntry>> {
    api.execs.lock().unwrap_or_else(|p| p.into_inner())
}

fn no_such_exec(id: &str) -> ApiError {
    ApiError::NotFound(format!("no such exec instance: {id}"))
}

/// `POST /exec/{id}/start`: runs it and streams its output (hijacked when
/// the client asks, with stdin copied to the process).
pub(super) async fn start(api: &Api, id: &str, mut req: Request<Incoming>) -> Reply {
    // The body is read first, as Docker does: a client still writing it
    // must not find the connection closed under an early "no such exec".
    let upgrade = super::take_upgrade(&mut req);
    let body: ExecStartRequest = json_body(req).await?;
    let (container_id, spec, want_out, want_err, progress) = {
        let execs = lock(api);
        let e = execs.get(id).ok_or_else(|| no_such_exec(id))?;
        let mut p = e.progress.lock().unwrap_or_else(|p| p.into_inner());
        if p.started {
            return Err(ApiError::Manager(crate::manager::ManagerError::Conflict(
                format!("exec instance {id} has already been started"),
            )));
        }
        p.started = true;
        (
            e.container_id.clone(),
            e.spec.clone(),
            e.stdout,
            e.stderr,
            e.progress.clone(),
        )
    };
    let m = api.manager().clone();
    let mut handle = blocking(move || Ok(m.exec(&container_id, spec)?)).await?;
    {
        let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
        p.running = true;
        p.pid = u32::try_from(handle.pid()).unwrap_or(0);
    }
    let stdin = handle.stdin.take();
    let out = handle.stdout.take();
    let err = handle.stderr.take();
    let (tx, rx) = ChannelBody::new();
    tokio::task::spawn_blocking(move || {
        let readers: Vec<_> = [
            (out, StreamKind::Stdout, want_out),
            (err, StreamKind::Stderr, want_err),
        ]
        .into_iter()
        .filter_map(|(f, kind, want)| Some((f?, kind, want)))
        .map(|(mut f, kind, want)| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                let mut client_gone = false;
                loop {
                    match f.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        // Keep draining after the client left so the
                        // process never blocks on a full pipe.
                        Ok(n) if want && !client_gone => {
                            client_gone = tx
                                .blocking_send(Bytes::from(frame(kind, &buf[..n])))
                                .is_err();
                        }
                        Ok(_) => {}
                    }
                }
            })
        })
        .collect();
        for r in readers {
            let _ = r.join();
        }
        let code = handle.wait().unwrap_or(-1);
        let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
        p.running = false;
        p.exit_code = Some(code);
        drop(tx);
    });
    if body.detach.unwrap_or(false) {
        drop(rx);
        return Ok(super::empty(StatusCode::OK));
    }
    Ok(stream_reply(
        upgrade,
        "application/vnd.docker.multiplexed-stream",
        rx,
        stdin,
    ))
}

/// `GET /exec/{id}/json`.
pub(super) fn inspect(api: &Api, id: &str) -> Reply {
    let execs = lock(api);
    let e = execs.get(id).ok_or_else(|| no_such_exec(id))?;
    let p = *e.progress.lock().unwrap_or_else(|p| p.into_inner());
    json(
        StatusCode::OK,
        &ExecInspect {
            id: id.to_owned(),
            running: p.running,
            exit_code: p.exit_code,
            container_id: e.container_id.clone(),
            open_stdin: e.spec.stdin,
            open_stdout: e.stdout,
            open_stderr: e.stderr,
            pid: p.pid,
            process_config: ExecProcessConfig {
                entrypoint: e.spec.cmd[0].clone(),
                arguments: e.spec.cmd[1..].to_vec(),
                tty: false,
                user: e.spec.user.clone().unwrap_or_default(),
            },
        },
    )
}
