//! `proto::InboundPolicy` / `proto::OutboundPolicy` -> [`InboundRules`] / [`OutboundRules`]:
//! the one place a policy resource is checked.

use super::*;

impl RouteMatcher {
    pub(super) fn from_proto(
        field: &str,
        m: Option<&proto::RouteMatch>,
    ) -> Result<Self, FieldError> {
        use proto::path_match::Kind;
        let Some(m) = m else {
            return Ok(Self::default());
        };
        let mut paths = Vec::with_capacity(m.paths.len());
        for (i, p) in m.paths.iter().enumerate() {
            let field = format!("{field}.paths[{i}]");
            paths.push(match &p.kind {
                Some(Kind::Exact(path) | Kind::Prefix(path)) if !path.starts_with('/') => {
                    return Err(FieldError::out_of_range(
                        field,
                        "a path must start with /",
                        format!("{path:?}"),
                    ));
                }
                Some(Kind::Exact(path)) => PathRule::Exact(path.clone()),
                Some(Kind::Prefix(path)) => PathRule::Prefix(path.clone()),
                Some(Kind::Regex(pattern)) => {
                    PathRule::Regex(anchored_regex(&format!("{field}.regex"), pattern)?)
                }
                None => return Err(FieldError::new(field, Problem::Empty)),
            });
        }
        let mut methods = Vec::with_capacity(m.methods.len());
        for (i, method) in m.methods.iter().enumerate() {
            methods.push(
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    FieldError::out_of_range(
                        format!("{field}.methods[{i}]"),
                        "must be an HTTP method",
                        format!("{method:?}"),
                    )
                })?,
            );
        }
        Ok(Self { paths, methods })
    }
}

impl Fallback {
    pub(super) fn from_proto(
        field: &str,
        rule: &Arc<str>,
        f: Option<&proto::Fallback>,
        default_status: StatusCode,
    ) -> Result<Self, FieldError> {
        let out_of_range = |what: &str, reason: &'static str, value: String| {
            FieldError::out_of_range(format!("{field}.{what}"), reason, value)
        };
        let mut headers = HeaderMap::new();
        let Some(f) = f else {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return Ok(Self {
                rule: Arc::clone(rule),
                status: default_status,
                headers,
                body: None,
            });
        };
        let mut status = match f.status {
            0 => default_status,
            s => u16::try_from(s)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| {
                    out_of_range("status", "must be an HTTP status 200..=599", s.to_string())
                })?,
        };
        for (name, value) in &f.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                out_of_range("headers", "must be a header name", format!("{name:?}"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                out_of_range("headers", "must be a header value", format!("{value:?}"))
            })?;
            headers.insert(name, value);
        }
        if !f.content_type.is_empty() {
            let value = HeaderValue::from_str(&f.content_type).map_err(|_| {
                out_of_range(
                    "contentType",
                    "must be a header value",
                    f.content_type.clone(),
                )
            })?;
            headers.insert(header::CONTENT_TYPE, value);
        } else if !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        if !f.redirect.is_empty() {
            let location = HeaderValue::from_str(&f.redirect).map_err(|_| {
                out_of_range("redirect", "must be a URL", format!("{:?}", f.redirect))
            })?;
            headers.insert(header::LOCATION, location);
            status = StatusCode::FOUND;
        }
        let body = (!f.body.is_empty()).then(|| Bytes::from(f.body.clone()));
        Ok(Self {
            rule: Arc::clone(rule),
            status,
            headers,
            body,
        })
    }
}

fn status(code: u32) -> StatusCode {
    u16::try_from(code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A threshold as a whole count (fractions round down, as a token bucket holds whole tokens),
/// refused when NaN, infinite or negative.
fn whole(field: &str, threshold: f64) -> Result<u64, FieldError> {
    let threshold = policy(field, check_threshold("threshold", threshold))?;
    Ok(crate::field::threshold(&format!("{field}.threshold"), threshold)? as u64)
}

fn hot_param(field: &str, h: &proto::HotParam) -> Result<HotParamSpec, FieldError> {
    let name = || non_empty(&format!("{field}.name"), &h.name);
    let source = match known::<proto::Source>(&format!("{field}.source"), "source", h.source)? {
        proto::Source::Header => ParamSource::Header(
            HeaderName::from_bytes(name()?.to_ascii_lowercase().as_bytes()).map_err(|_| {
                FieldError::out_of_range(
                    format!("{field}.name"),
                    "must be a header name",
                    format!("{:?}", h.name),
                )
            })?,
        ),
        proto::Source::Query => ParamSource::Query(name()?.to_owned()),
        proto::Source::Cookie => ParamSource::Cookie(name()?.to_owned()),
        proto::Source::ClientIp => ParamSource::ClientIp,
        proto::Source::Host => ParamSource::Host,
    };
    let mut config = HotParamConfig::new(
        whole(field, h.threshold)?,
        duration(&format!("{field}.window"), h.window.as_ref())?.unwrap_or(DEFAULT_HOT_WINDOW),
    );
    config.burst = u64::from(count(&format!("{field}.burst"), h.burst)?);
    config.overrides = h
        .overrides
        .iter()
        .enumerate()
        .map(|(k, o)| {
            Ok((
                o.value.clone(),
                whole(&format!("{field}.overrides[{k}]"), o.threshold)?,
            ))
        })
        .collect::<Result<_, FieldError>>()?;
    if h.max_tracked_values > 0 {
        // The table is sized for it up front: bounded as the control plane bounds it.
        if h.max_tracked_values > lanemesh_api::limits::MAX_TRACKED_VALUES {
            return Err(FieldError::out_of_range(
                format!("{field}.maxTrackedValues"),
                "must be at most 1000000",
                h.max_tracked_values.to_string(),
            ));
        }
        config.capacity = usize::try_from(h.max_tracked_values).unwrap_or(usize::MAX);
    }
    policy(field, config.validate())?;
    Ok(HotParamSpec { source, config })
}

fn qps(field: &str, q: &proto::QpsLimit) -> Result<QpsSpec, FieldError> {
    known::<proto::Scope>(&format!("{field}.scope"), "scope", q.scope)?;
    let behavior = match known(&format!("{field}.behavior"), "behavior", q.behavior)? {
        proto::QpsBehavior::Reject => QpsBehavior::Reject,
        proto::QpsBehavior::WarmUp => QpsBehavior::WarmUp {
            period: duration(&format!("{field}.warmUpPeriod"), q.warm_up_period.as_ref())?
                .unwrap_or(DEFAULT_WARM_UP),
        },
        proto::QpsBehavior::Queue => QpsBehavior::Queue {
            max_queue_time: duration(&format!("{field}.maxQueueTime"), q.max_queue_time.as_ref())?
                .unwrap_or(lanemesh_api::defaults::MAX_QUEUE_TIME),
        },
    };
    crate::field::threshold(&format!("{field}.threshold"), q.threshold)?;
    policy(field, QpsLimiter::validate(q.threshold, behavior))?;
    Ok(QpsSpec {
        threshold: q.threshold,
        behavior,
    })
}

impl TryFrom<&proto::InboundPolicy> for InboundRules {
    type Error = FieldError;

    fn try_from(p: &proto::InboundPolicy) -> Result<Self, FieldError> {
        non_empty("name", &p.name)?;
        non_empty("app", &p.app)?;
        let limit_status = status(lanemesh_api::defaults::LIMIT_STATUS);
        let mut rules = Vec::with_capacity(p.rules.len());
        for (i, r) in p.rules.iter().enumerate() {
            let field = format!("rules[{i}]");
            let name: Arc<str> = Arc::from(r.name.as_str());
            let hot_params = r
                .hot_params
                .iter()
                .enumerate()
                .map(|(j, h)| hot_param(&format!("{field}.hotParams[{j}]"), h))
                .collect::<Result<_, _>>()?;
            rules.push(Arc::new(RateRule {
                matcher: RouteMatcher::from_proto(&format!("{field}.match"), r.r#match.as_ref())?,
                qps: r
                    .qps
                    .as_ref()
                    .map(|q| qps(&format!("{field}.qps"), q))
                    .transpose()?,
                concurrency: r
                    .concurrency
                    .as_ref()
                    .map(|c| count(&format!("{field}.concurrency.max"), c.max))
                    .transpose()?,
                hot_params,
                fallback: Fallback::from_proto(
                    &format!("{field}.fallback"),
                    &name,
                    r.fallback.as_ref(),
                    limit_status,
                )?,
                dry_run: r.dry_run,
                name,
            }));
        }
        let overload = match &p.overload {
            Some(o) => {
                known::<proto::OverloadStrategy>("overload.strategy", "strategy", o.strategy)?;
                let mode = match known("overload.mode", "overload mode", o.mode)? {
                    proto::OverloadMode::Off => None,
                    proto::OverloadMode::DryRun => Some(OverloadMode::DryRun),
                    proto::OverloadMode::On => Some(OverloadMode::On),
                };
                let name: Arc<str> = if o.name.is_empty() {
                    Arc::from(format!("{}/overload", p.app))
                } else {
                    Arc::from(o.name.as_str())
                };
                let config = OverloadConfig::new(mode.unwrap_or_default(), o.cpu_threshold);
                policy("overload", config.validate())?;
                let fallback = Fallback::from_proto(
                    "overload.fallback",
                    &name,
                    o.fallback.as_ref(),
                    status(lanemesh_api::defaults::SHED_STATUS),
                )?;
                mode.map(|mode| {
                    Arc::new(OverloadRule {
                        config: OverloadConfig { mode, ..config },
                        fallback,
                        name,
                    })
                })
            }
            None => None,
        };
        Ok(Self { rules, overload })
    }
}

impl TryFrom<&proto::OutboundPolicy> for OutboundRules {
    type Error = FieldError;

    fn try_from(p: &proto::OutboundPolicy) -> Result<Self, FieldError> {
        non_empty("name", &p.name)?;
        non_empty("app", &p.app)?;
        let mut breakers = Vec::with_capacity(p.breakers.len());
        for (i, b) in p.breakers.iter().enumerate() {
            let field = format!("breakers[{i}]");
            let name: Arc<str> = Arc::from(b.name.as_str());
            let strategy = match known(&format!("{field}.strategy"), "strategy", b.strategy)? {
                proto::BreakerStrategy::SlowRequestRatio => BreakerStrategy::SlowRequestRatio {
                    threshold: b.threshold,
                    slow_request_duration: duration(
                        &format!("{field}.slowRequestDuration"),
                        b.slow_request_duration.as_ref(),
                    )?
                    .unwrap_or_default(),
                },
                proto::BreakerStrategy::ErrorRatio => BreakerStrategy::ErrorRatio {
                    threshold: b.threshold,
                },
                proto::BreakerStrategy::ErrorCount => BreakerStrategy::ErrorCount {
                    threshold: whole(&field, b.threshold)?,
                },
            };
            let config = BreakerConfig {
                strategy,
                window: duration(&format!("{field}.window"), b.window.as_ref())?
                    .unwrap_or_default(),
                min_requests: u64::from(count(&format!("{field}.minRequests"), b.min_requests)?),
                open_duration: duration(
                    &format!("{field}.openDuration"),
                    b.open_duration.as_ref(),
                )?
                .unwrap_or_default(),
                half_open_probes: b.half_open_probes,
            };
            policy(&field, config.validate())?;
            breakers.push(Arc::new(BreakerRule {
                matcher: RouteMatcher::from_proto(&format!("{field}.match"), b.r#match.as_ref())?,
                config,
                fallback: Fallback::from_proto(
                    &format!("{field}.fallback"),
                    &name,
                    b.fallback.as_ref(),
                    status(lanemesh_api::defaults::SHED_STATUS),
                )?,
                errors: ErrorClassifier::from_proto(b.errors.as_ref()),
                dry_run: b.dry_run,
                name,
            }));
        }
        let timeout = duration("timeout", p.timeout.as_ref())?;
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(FieldError::out_of_range(
                "timeout",
                "must be a positive duration",
                "0s".to_owned(),
            ));
        }
        let routes = p
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| traffic_rule(&format!("routes[{i}]"), r).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let budget = match &p.retry_budget {
            Some(b) => {
                let config = BudgetConfig {
                    ratio: b.ratio,
                    min_per_second: b.min_per_second,
                    ttl: duration("retry_budget.ttl", b.ttl.as_ref())?
                        .unwrap_or(lanemesh_api::defaults::RETRY_BUDGET_TTL),
                };
                policy("retry_budget", config.validate())?;
                Some(config)
            }
            None if routes.iter().any(|r| r.retry.is_some()) => Some(BudgetConfig {
                ratio: lanemesh_api::defaults::RETRY_BUDGET_RATIO,
                min_per_second: lanemesh_api::defaults::RETRY_BUDGET_MIN_PER_SECOND,
                ttl: lanemesh_api::defaults::RETRY_BUDGET_TTL,
            }),
            None => None,
        };
        let warmup = match &p.warmup {
            Some(w) => Some(warmup(w)?),
            None => None,
        };
        Ok(Self {
            app: Arc::from(p.app.as_str()),
            breakers,
            timeout,
            routes,
            budget,
            warmup,
        })
    }
}

fn positive(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, FieldError> {
    let d = duration(field, d)?;
    if d.is_some_and(|d| d.is_zero()) {
        return Err(FieldError::out_of_range(
            field,
            "must be a positive duration",
            "0s".to_owned(),
        ));
    }
    Ok(d)
}

fn traffic_rule(field: &str, r: &proto::TrafficRoute) -> Result<TrafficRule, FieldError> {
    non_empty(&format!("{field}.name"), &r.name)?;
    let retry = match &r.retries {
        Some(retries) => {
            let field = format!("{field}.retries");
            let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
            let config = RetryConfig {
                attempts: retries.attempts,
                per_try_timeout: positive(
                    &format!("{field}.per_try_timeout"),
                    retries.per_try_timeout.as_ref(),
                )?,
                on_connect_failure: retries.on_connect_failure,
                on_reset: retries.on_reset,
                on_timeout: retries.on_timeout,
                http: retries
                    .http_statuses
                    .iter()
                    .map(|r| (clamp(r.from), clamp(r.to)))
                    .collect(),
                grpc: retries.grpc_codes.clone(),
                non_idempotent: retries.non_idempotent,
                backoff_base: duration(
                    &format!("{field}.backoff_base"),
                    retries.backoff_base.as_ref(),
                )?
                .unwrap_or(lanemesh_api::defaults::RETRY_BACKOFF_BASE),
                backoff_max: duration(
                    &format!("{field}.backoff_max"),
                    retries.backoff_max.as_ref(),
                )?
                .unwrap_or(lanemesh_api::defaults::RETRY_BACKOFF_BASE.saturating_mul(10)),
            };
            policy(&field, config.validate())?;
            Some(Arc::new(config))
        }
        None => None,
    };
    Ok(TrafficRule {
        name: Arc::from(r.name.as_str()),
        matcher: RouteMatcher::from_proto(&format!("{field}.match"), r.r#match.as_ref())?,
        timeout: positive(&format!("{field}.timeout"), r.timeout.as_ref())?,
        retry,
    })
}

fn warmup(w: &proto::Warmup) -> Result<WarmupConfig, FieldError> {
    let Some(duration) = positive("warmup.duration", w.duration.as_ref())? else {
        return Err(FieldError::new("warmup.duration", Problem::Empty));
    };
    if !(w.aggression.is_finite() && w.aggression > 0.0) {
        return Err(FieldError::out_of_range(
            "warmup.aggression",
            "must be a positive number",
            w.aggression.to_string(),
        ));
    }
    if !(w.min_weight > 0.0 && w.min_weight <= 1.0) {
        return Err(FieldError::out_of_range(
            "warmup.min_weight",
            "must be a ratio in (0, 1]",
            w.min_weight.to_string(),
        ));
    }
    Ok(WarmupConfig {
        duration,
        aggression: w.aggression,
        min_weight: w.min_weight,
    })
}
