//! `ConfigService`: the operator API.

use std::sync::Arc;

use rand::RngCore;
use switchyard_proto::config::{self, ApiKey, Config};
use switchyard_proto::control::{
    config_service_server::ConfigService, resource::Spec, ApplyConfigRequest, ApplyResourceRequest,
    CreateKeyRequest, CreateKeyResponse, DeleteResourceRequest, DiffRequest, DiffResponse,
    FieldError as PbFieldError, GetBudgetStatusRequest, GetBudgetStatusResponse, GetConfigRequest,
    GetConfigResponse, GetUsageRequest, GetUsageResponse, HistoryRequest, HistoryResponse,
    ListBudgetsRequest, ListBudgetsResponse, ListEdgesRequest, ListEdgesResponse, ListKeysRequest,
    ListKeysResponse, ListResourcesRequest, ListResourcesResponse, Resource, ResourceKind,
    RevokeKeyRequest, RollbackRequest, SetBudgetRequest, ValidateRequest, ValidateResponse,
    WriteResult,
};
use tonic::{Request, Response, Status};

use super::{Mutation, State};
use crate::versioning::{self, ResourceError};

/// Default and maximum page size of `History`.
const HISTORY_DEFAULT: usize = 50;
const HISTORY_MAX: usize = 1000;

/// Implementation of `switchyard.control.v1.ConfigService`.
#[derive(Clone)]
pub struct ConfigApi {
    state: Arc<State>,
}

impl ConfigApi {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

fn resource_status(e: ResourceError) -> Status {
    match e {
        ResourceError::Invalid(m) => Status::invalid_argument(m),
        ResourceError::NotFound { .. } => Status::not_found(e.to_string()),
    }
}

/// A new virtual-key secret: `sy-` and 64 hex digits (256 random bits).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("sy-{}", hex::encode(bytes))
}

fn kind_of(raw: i32) -> Result<ResourceKind, Status> {
    ResourceKind::try_from(raw)
        .map_err(|_| Status::invalid_argument(format!("unknown resource kind {raw}")))
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn apply_config(
        &self,
        req: Request<ApplyConfigRequest>,
    ) -> Result<Response<WriteResult>, Status> {
        let req = req.into_inner();
        let doc = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let m = Mutation {
            operation: "apply",
            rollback_of: 0,
            change: Box::new(move |_| Ok(doc.clone())),
        };
        self.state.write(req.options, m).await.map(Response::new)
    }

    async fn apply_resource(
        &self,
        req: Request<ApplyResourceRequest>,
    ) -> Result<Response<WriteResult>, Status> {
        let req = req.into_inner();
        let res = req
            .resource
            .ok_or_else(|| Status::invalid_argument("resource is required"))?;
        let m = upsert("apply_resource", res);
        self.state.write(req.options, m).await.map(Response::new)
    }

    async fn delete_resource(
        &self,
        req: Request<DeleteResourceRequest>,
    ) -> Result<Response<WriteResult>, Status> {
        let req = req.into_inner();
        let kind = kind_of(req.kind)?;
        let name = req.name;
        let m = Mutation {
            operation: "delete_resource",
            rollback_of: 0,
            change: Box::new(move |cur| {
                let mut next = cur.clone();
                versioning::delete_resource(&mut next, kind, &name).map_err(resource_status)?;
                Ok(next)
            }),
        };
        self.state.write(req.options, m).await.map(Response::new)
    }

    async fn get_config(
        &self,
        req: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        let l = self.state.resolve(req.into_inner().version).await?;
        Ok(Response::new(GetConfigResponse {
            info: Some(versioning::info(&l.env)),
            config: Some(l.config.clone()),
        }))
    }

    async fn list_resources(
        &self,
        req: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let req = req.into_inner();
        let kind = kind_of(req.kind)?;
        let l = self.state.resolve(req.version).await?;
        Ok(Response::new(ListResourcesResponse {
            version: l.env.version,
            resources: versioning::list_resources(&l.config, kind),
        }))
    }

    async fn diff(&self, req: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let req = req.into_inner();
        let mut proposed = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        if let Err(errors) = versioning::normalize(&mut proposed) {
            return Err(Status::invalid_argument(format!(
                "invalid config: {}",
                versioning::describe_errors(&errors)
            )));
        }
        let base = self.state.resolve(req.base_version).await?;
        let d = versioning::diff(&base.config, &proposed);
        Ok(Response::new(DiffResponse {
            base_version: base.env.version,
            text: versioning::render_text(&d.entries),
            entries: d.entries,
            summary: d.summary,
        }))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let req = req.into_inner();
        let limit = match req.limit as usize {
            0 => HISTORY_DEFAULT,
            n => n.min(HISTORY_MAX),
        };
        let versions = self
            .state
            .store()
            .history(req.before_version, limit)
            .await
            .map_err(super::store_status)?;
        let current = versions
            .first()
            .map(|v| v.version)
            .unwrap_or(0)
            .max(self.state.head_version());
        Ok(Response::new(HistoryResponse {
            versions: versions.iter().map(versioning::info).collect(),
            current_version: current,
        }))
    }

    async fn rollback(
        &self,
        req: Request<RollbackRequest>,
    ) -> Result<Response<WriteResult>, Status> {
        let req = req.into_inner();
        if req.to_version == 0 {
            return Err(Status::invalid_argument(
                "to_version must be a committed version (>= 1)",
            ));
        }
        let target = self.state.resolve(req.to_version).await?;
        let mut opts = req.options.unwrap_or_default();
        if opts.comment.is_empty() {
            opts.comment = format!("rollback to version {}", req.to_version);
        }
        let doc = target.config.clone();
        let m = Mutation {
            operation: "rollback",
            rollback_of: req.to_version,
            change: Box::new(move |_| Ok(doc.clone())),
        };
        self.state.write(Some(opts), m).await.map(Response::new)
    }

    async fn validate(
        &self,
        req: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let mut cfg = req.into_inner().config.unwrap_or_default();
        let errors = match versioning::check(&mut cfg) {
            Ok(()) => vec![],
            Err(errors) => errors
                .into_iter()
                .map(|e| PbFieldError {
                    path: e.path,
                    message: e.message,
                })
                .collect(),
        };
        Ok(Response::new(ValidateResponse {
            valid: errors.is_empty(),
            errors,
        }))
    }

    async fn list_edges(
        &self,
        _req: Request<ListEdgesRequest>,
    ) -> Result<Response<ListEdgesResponse>, Status> {
        Ok(Response::new(ListEdgesResponse {
            current_version: self.state.head_version(),
            edges: self.state.edges(),
        }))
    }

    async fn create_key(
        &self,
        req: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        let req = req.into_inner();
        if req.id.is_empty() {
            return Err(Status::invalid_argument("id must not be empty"));
        }
        let dry_run = req.options.as_ref().is_some_and(|o| o.dry_run);
        let secret = generate_secret();
        let key = ApiKey {
            id: req.id.clone(),
            secret_sha256: config::sha256_hex(secret.as_bytes()),
            secret: String::new(),
            team: req.team,
            user: req.user,
            tier: req.tier,
            allowed_models: req.allowed_models,
            default_feature: req.default_feature,
            revoked: false,
        };
        let new_key = key.clone();
        let m = Mutation {
            operation: "create_key",
            rollback_of: 0,
            change: Box::new(move |cur: &Config| {
                if cur.keys.iter().any(|k| k.id == new_key.id) {
                    return Err(Status::already_exists(format!(
                        "key {:?} already exists",
                        new_key.id
                    )));
                }
                let mut next = cur.clone();
                next.keys.push(new_key.clone());
                Ok(next)
            }),
        };
        let result = self.state.write(req.options, m).await?;
        Ok(Response::new(CreateKeyResponse {
            secret: if dry_run { String::new() } else { secret },
            key: Some(key),
            result: Some(result),
        }))
    }

    async fn revoke_key(
        &self,
        req: Request<RevokeKeyRequest>,
    ) -> Result<Response<WriteResult>, Status> {
        let req = req.into_inner();
        let id = req.id;
        let m = Mutation {
            operation: "revoke_key",
            rollback_of: 0,
            change: Box::new(move |cur: &Config| {
                let mut next = cur.clone();
                let k = next
                    .keys
                    .iter_mut()
                    .find(|k| k.id == id)
                    .ok_or_else(|| Status::not_found(format!("key {id:?} not found")))?;
                k.revoked = true;
                Ok(next)
            }),
        };
        self.state.write(req.options, m).await.map(Response::new)
    }

    async fn list_keys(
        &self,
        req: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let l = self.state.resolve(req.into_inner().version).await?;
        let keys = l
            .config
            .keys
            .iter()
            .map(|k| ApiKey {
                secret: String::new(),
                secret_sha256: String::new(),
                ..k.clone()
            })
            .collect();
        Ok(Response::new(ListKeysResponse {
            version: l.env.version,
            keys,
        }))
    }

    async fn set_budget(
        &self,
        req: Request<SetBudgetRequest>,
    ) -> Result<Response<WriteResult>, Status> {
        let req = req.into_inner();
        let budget = req
            .budget
            .ok_or_else(|| Status::invalid_argument("budget is required"))?;
        let res = Resource {
            name: budget.name.clone(),
            spec: Some(Spec::Budget(budget)),
        };
        let m = upsert("set_budget", res);
        self.state.write(req.options, m).await.map(Response::new)
    }

    async fn list_budgets(
        &self,
        req: Request<ListBudgetsRequest>,
    ) -> Result<Response<ListBudgetsResponse>, Status> {
        let l = self.state.resolve(req.into_inner().version).await?;
        Ok(Response::new(ListBudgetsResponse {
            version: l.env.version,
            budgets: l.config.budgets.clone(),
        }))
    }

    async fn get_usage(
        &self,
        req: Request<GetUsageRequest>,
    ) -> Result<Response<GetUsageResponse>, Status> {
        let req = req.into_inner();
        let group_by = crate::usage::GroupBy::parse(&req.group_by).ok_or_else(|| {
            Status::invalid_argument(format!(
                "group_by {:?}: expected one of {}",
                req.group_by,
                crate::usage::GroupBy::NAMES
            ))
        })?;
        let mut agg = crate::usage::Aggregator::new(group_by, req.since_unix_ms, req.until_unix_ms);
        self.state
            .store()
            .scan_usage(&mut |edge, batch| agg.add(edge, &batch))
            .await
            .map_err(super::store_status)?;
        Ok(Response::new(agg.finish()))
    }

    async fn get_budget_status(
        &self,
        req: Request<GetBudgetStatusRequest>,
    ) -> Result<Response<GetBudgetStatusResponse>, Status> {
        let req = req.into_inner();
        let mut allocations = self
            .state
            .store()
            .list_allocations()
            .await
            .map_err(super::store_status)?;
        allocations.retain(|a| req.budget.is_empty() || a.budget == req.budget);
        allocations.sort_by(|a, b| {
            b.window_start_unix_ms
                .cmp(&a.window_start_unix_ms)
                .then(a.budget.cmp(&b.budget))
        });
        for a in &mut allocations {
            a.edges.sort_by(|x, y| x.edge_id.cmp(&y.edge_id));
        }
        Ok(Response::new(GetBudgetStatusResponse { allocations }))
    }
}

/// A write that merges one resource into the current document.
fn upsert(operation: &'static str, res: Resource) -> Mutation<'static> {
    Mutation {
        operation,
        rollback_of: 0,
        change: Box::new(move |cur| {
            let mut next = cur.clone();
            versioning::apply_resource(&mut next, res.clone()).map_err(resource_status)?;
            Ok(next)
        }),
    }
}
