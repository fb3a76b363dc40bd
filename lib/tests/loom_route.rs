//! Placeholder replaced by the completion-routing model.
