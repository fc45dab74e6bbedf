//! tmp

