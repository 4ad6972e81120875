//! pgkeep's Kubernetes side: the manifests as pure functions of the settings ([`manifests`]),
//! written as YAML in the seed's kustomize layout ([`yaml`]); the linter that checks any
//! Kubernetes YAML (rendered or hand-written) for the pitfalls that lose data ([`lint`]); and the
//! API operations behind every `--kube` command, each taking an injected `kube::Client` ([`ops`]).

pub mod lint;
pub mod manifests;
pub mod ops;
pub mod yaml;
