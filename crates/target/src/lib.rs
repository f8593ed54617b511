//! rtgt-target
