//! pgkeep's Kubernetes side, without API calls: the manifests as pure functions of the settings
//! ([`manifests`]), written as YAML in the seed's kustomize layout ([`yaml`]), and the linter
//! that checks any Kubernetes YAML (rendered or hand-written) for the pitfalls that lose data
//! ([`lint`]). The API client layer (ensure PVCs, apply, scale, run Jobs) lives in its own
//! module once it lands.

pub mod lint;
pub mod manifests;
pub mod yaml;
