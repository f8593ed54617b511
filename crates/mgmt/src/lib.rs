//! rtgt-mgmt
