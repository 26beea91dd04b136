//! The protocols a request may arrive or leave in, end to end.

mod grpc;
mod streams;
