//! End-to-end tests: the real `image-syncer` binary against real CNCF
//! distribution registries started on 127.0.0.1 (see image-syncer-testkit).

mod support;

mod bundles;
mod credentials;
mod doc_blocks;
mod docs;
mod ecr;
mod examples;
mod faults;
mod gar_acr;
mod hostile;
mod image;
mod inputs;
mod keyless;
mod layout;
mod plugins;
mod referrers;
mod requests;
mod service;
mod signing;
mod stress;
mod sync;
mod tags;
mod tls;
mod upstream;
