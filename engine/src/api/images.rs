//! `/images/...`: list, inspect, remove, load, pull.

use std::io::Write;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::types::{ErrorDetail, ImageDeleteItem, ImageSummaryJson, JsonMessage, ProgressDetail};
use super::{blocking, json, Api, ApiError, ChannelBody, Query, Reply};
use crate::image::pull::{PullEvent, PullProgress};
use crate::image::ImageSummary;
use crate::image::Reference;

fn summary(s: &ImageSummary) -> ImageSummaryJson {
    let size = i64::try_from(s.size).unwrap_or(i64::MAX);
    ImageSummaryJson {
        id: s.id.to_string(),
        parent_id: String::new(),
        repo_tags: s.tags.iter().map(|t| t.familiar()).collect(),
        repo_digests: s
            .tags
            .iter()
            .map(|t| format!("{}@{}", t.repository(), s.manifest_digest))
            .collect(),
        created: s.created.as_deref().map_or(0, super::time::parse_rfc3339),
        size,
        virtual_size: size,
        shared_size: -1,
        labels: Default::default(),
        containers: -1,
    }
}

/// `GET /images/json`.
pub(super) async fn list(api: &Api, q: &Query) -> Reply {
    let _all = q.bool("all", false);
    let m = api.manager().clone();
    let images = blocking(move || Ok(m.images().list())).await?;
    json(
        StatusCode::OK,
        &images.iter().map(summary).collect::<Vec<_>>(),
    )
}

/// `GET /images/{name}/json`: the parts of Docker's image inspect that
/// berth knows.
pub(super) async fn inspect(api: &Api, name: &str) -> Reply {
    let m = api.manager().clone();
    let name = name.to_owned();
    let img = blocking(move || Ok(m.images().resolve(&name)?)).await?;
    let cfg = img.config.config();
    let size: u64 = img.manifest.layers().iter().map(|l| l.size()).sum();
    json(
        StatusCode::OK,
        &json!({
            "Id": img.id.to_string(),
            "RepoTags": img.tags.iter().map(|t| t.familiar()).collect::<Vec<_>>(),
            "RepoDigests": img.tags.iter().map(|t| format!("{}@{}", t.repository(), img.manifest_digest)).collect::<Vec<_>>(),
            "Parent": "",
            "Comment": "",
            "Created": img.config.created().clone().unwrap_or_else(|| super::time::ZERO.to_owned()),
            "Author": img.config.author().clone().unwrap_or_default(),
            "Architecture": img.config.architecture().to_string(),
            "Os": img.config.os().to_string(),
            "Size": size,
            "VirtualSize": size,
            "Config": cfg.as_ref().map(|c| json!({
                "User": c.user().clone().unwrap_or_default(),
                "Env": c.env().clone().unwrap_or_default(),
                "Cmd": c.cmd(),
                "Entrypoint": c.entrypoint(),
                "WorkingDir": c.working_dir().clone().unwrap_or_default(),
                "Labels": c.labels(),
                "StopSignal": c.stop_signal(),
            })),
            "RootFS": {"Type": "layers", "Layers": img.diff_ids.iter().map(ToString::to_string).collect::<Vec<_>>()},
            "Metadata": {"LastTagTime": super::time::ZERO},
        }),
    )
}

/// `DELETE /images/{name}?force=`: untags, and deletes what is no longer
/// used. As dockerd, removing the last name of an image a container (even
/// a stopped one) was created from is a 409 unless `force`.
pub(super) async fn remove(api: &Api, name: &str, q: &Query) -> Reply {
    let force = q.bool("force", false);
    let m = api.manager().clone();
    let name = name.to_owned();
    let removed = blocking(move || {
        if !force {
            refuse_if_used(&m, &name)?;
        }
        let in_use = m.layers_in_use();
        Ok(m.images().remove(&name, &in_use)?)
    })
    .await?;
    let mut items: Vec<ImageDeleteItem> = removed
        .untagged
        .iter()
        .map(|t| ImageDeleteItem {
            untagged: Some(t.familiar()),
            deleted: None,
        })
        .collect();
    items.extend(removed.deleted.iter().map(|d| ImageDeleteItem {
        untagged: None,
        deleted: Some(d.to_string()),
    }));
    json(StatusCode::OK, &items)
}

/// A 409 when removing `name` would leave a container's image without a
/// name: it names the image by id, or by its only tag.
fn refuse_if_used(m: &crate::manager::Manager, name: &str) -> Result<(), ApiError> {
    let img = m.images().resolve(name)?;
    let id = img.id.to_string();
    let Some(user) = m.list(true).into_iter().find(|c| c.image_id == id) else {
        return Ok(());
    };
    let tags: usize = m
        .images()
        .list()
        .iter()
        .filter(|s| s.id == img.id)
        .map(|s| s.tags.len())
        .sum();
    let by_tag = Reference::parse(name).is_ok_and(|r| {
        let tag = r.normalized().to_string();
        img.tags.iter().any(|t| t.to_string() == tag)
    });
    if by_tag && tags > 1 {
        return Ok(());
    }
    Err(crate::manager::ManagerError::Conflict(format!(
        "conflict: unable to remove image {name} (must force): container {} ({}) uses it",
        &user.id[..12.min(user.id.len())],
        user.name
    ))
    .into())
}

/// `POST /images/load`: the body is an archive (docker save, OCI archive,
/// compressed or not). It is spooled to a temporary file, then imported.
pub(super) async fn load(api: &Api, q: &Query, req: Request<Incoming>) -> Reply {
    // `quiet` only hides progress bars, which berth does not draw.
    let _quiet = q.bool("quiet", false);
    std::fs::create_dir_all(&api.tmp_dir)
        .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", api.tmp_dir.display())))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".load-")
        .suffix(".tar")
        .tempfile_in(&api.tmp_dir)
        .map_err(|e| {
            ApiError::Internal(format!(
                "cannot create a temporary file in {}: {e}",
                api.tmp_dir.display()
            ))
        })?;
    let mut body = req.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::BadRequest(format!("cannot read the uploaded archive: {e}")))?;
        if let Some(data) = frame.data_ref() {
            total += data.len() as u64;
            tmp.write_all(data).map_err(|e| {
                ApiError::Internal(format!("cannot write {}: {e}", tmp.path().display()))
            })?;
        }
    }
    if total == 0 {
        return Err(ApiError::BadRequest(
            "the request body is empty: send an image archive (docker save, OCI archive)".into(),
        ));
    }
    let m = api.manager().clone();
    let imported = blocking(move || {
        let r = m.images().import(tmp.path(), None);
        drop(tmp);
        Ok(r?)
    })
    .await?;
    let mut out = Vec::new();
    for img in &imported {
        let text = if img.tags.is_empty() {
            format!("Loaded image ID: {}\n", img.id)
        } else {
            img.tags
                .iter()
                .map(|t| format!("Loaded image: {}\n", t.familiar()))
                .collect()
        };
        let msg = JsonMessage {
            stream: Some(text),
            ..Default::default()
        };
        out.extend(serde_json::to_vec(&msg).unwrap_or_default());
        out.push(b'\n');
    }
    let mut r = hyper::Response::new(super::full(out));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// Sends pull events as Docker's JSON messages.
struct StreamProgress {
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
}

impl StreamProgress {
    fn send(&self, msg: &JsonMessage) {
        let mut bytes = serde_json::to_vec(msg).unwrap_or_default();
        bytes.push(b'\n');
        // A client that went away does not stop the pull.
        let _ = self.tx.blocking_send(bytes.into());
    }
}

fn short(d: &crate::image::Digest) -> String {
    d.hex().chars().take(12).collect()
}

fn status(text: String, id: Option<String>) -> JsonMessage {
    JsonMessage {
        status: Some(text),
        id,
        ..Default::default()
    }
}

impl PullProgress for StreamProgress {
    fn event(&mut self, event: &PullEvent) {
        let msg = match event {
            PullEvent::Resolving { reference } => status(
                format!("Pulling from {}", reference.path()),
                reference.tag().map(str::to_owned),
            ),
            PullEvent::Resolved { manifest, layers } => {
                status(format!("Resolved {manifest} ({layers} layers)"), None)
            }
            PullEvent::LayerPresent { digest, .. } => {
                status("Already exists".into(), Some(short(digest)))
            }
            PullEvent::LayerProgress {
                digest,
                done,
                total,
                ..
            } => JsonMessage {
                status: Some("Downloading".into()),
                id: Some(short(digest)),
                progress_detail: Some(ProgressDetail {
                    current: *done,
                    total: *total,
                }),
                ..Default::default()
            },
            PullEvent::LayerRetry {
                index,
                attempt,
                reason,
            } => status(
                format!("Retrying layer {index} (attempt {attempt}): {reason}"),
                None,
            ),
            PullEvent::LayerDone { digest, .. } => {
                status("Pull complete".into(), Some(short(digest)))
            }
            PullEvent::Done { manifest, .. } => status(format!("Digest: {manifest}"), None),
        };
        self.send(&msg);
    }
}

/// `POST /images/create?fromImage=&tag=` (pull): Docker's JSON message
/// stream; a failure after the stream started is its last message.
pub(super) async fn pull(api: &Api, q: &Query) -> Reply {
    let image = q.get("fromImage").unwrap_or("");
    if image.is_empty() {
        return Err(ApiError::BadRequest(
            "fromImage is required: berth can only pull (not import) with /images/create".into(),
        ));
    }
    let name = match q.get("tag").filter(|t| !t.is_empty()) {
        Some(t) if t.starts_with("sha256:") => format!("{image}@{t}"),
        Some(t) => format!("{image}:{t}"),
        None => image.to_owned(),
    };
    let reference = Reference::parse(&name).map_err(crate::image::ImageError::from)?;
    let m = api.manager().clone();
    let (tx, body) = ChannelBody::new();
    tokio::task::spawn_blocking(move || {
        let mut progress = StreamProgress { tx };
        let last = match m.images().pull(&reference, &mut progress) {
            Ok(_) => status(
                format!("Status: Downloaded image for {}", reference.familiar()),
                None,
            ),
            Err(e) => {
                let message = ApiError::from(e).message();
                JsonMessage {
                    error: Some(message.clone()),
                    error_detail: Some(ErrorDetail { message }),
                    ..Default::default()
                }
            }
        };
        progress.send(&last);
    });
    let mut r = hyper::Response::new(body.boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}
