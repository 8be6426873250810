//! Generated code for the `ordo.v1` protocol: the app-facing sequencer and cluster APIs and the
//! member-to-member quorum API.
#![forbid(unsafe_code)]
#![allow(clippy::all, missing_docs)]

/// `ordo.v1`.
pub mod v1 {
    tonic::include_proto!("ordo.v1");
}

/// Encoded `FileDescriptorSet` of every `ordo.v1` file (for gRPC server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ordo_descriptor");
