//! `mirror-target` in the request's phases: the copy is made once the request is admitted,
//! and sent when its body (if copied) has passed, never holding the request up.

use super::context::RequestCtx;
use super::IngressProxy;
use crate::routing::request_key::RequestFacts;
use crate::upstream::mirror::MirrorCopy;
use pingora::prelude::*;

impl IngressProxy {
    /// Makes the route's copy of an admitted request: sent now when it carries no body,
    /// else kept until the body has passed.
    pub(super) fn start_mirror(&self, session: &Session, ctx: &mut RequestCtx) {
        let Some(compiled) = ctx.route().and_then(|r| r.mirror.as_deref()) else {
            return;
        };
        if !compiled.samples(|denominator| fastrand::u32(0..denominator)) {
            return;
        }
        let endpoint = match &compiled.pool {
            None => None,
            Some(pool) => match pool.balancer.pick(&[], &[]) {
                Some(i) => Some(pool.balancer.endpoint(i).addr),
                None => {
                    // The mirror's backend has no endpoint: nothing to copy to.
                    self.mirrors.dropped();
                    return;
                }
            },
        };
        let facts = RequestFacts {
            req: session.req_header(),
            client: self.client(session),
            https: ctx.https,
            server_port: super::server_port(session),
        };
        let Some(copy) = MirrorCopy::new(&compiled.mirror, endpoint, &facts) else {
            self.mirrors.dropped();
            return;
        };
        if copy.body.is_some() {
            ctx.mirror = Some(copy);
        } else {
            let (copy, body) = copy.finish();
            self.mirrors.send(copy, body);
        }
    }

    /// Gathers a chunk of the body into the waiting copy, and sends it at the end.
    pub(super) fn mirror_body(&self, chunk: Option<&[u8]>, end: bool, ctx: &mut RequestCtx) {
        let Some(copy) = ctx.mirror.as_mut() else {
            return;
        };
        if !copy.gather(chunk.unwrap_or_default()) {
            ctx.mirror = None;
            self.mirrors.dropped();
            return;
        }
        if end {
            if let Some(copy) = ctx.mirror.take() {
                let (copy, body) = copy.finish();
                self.mirrors.send(copy, body);
            }
        }
    }
}
