//! rtgt-backing
