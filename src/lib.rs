//! Emporium: an order and inventory runtime. See DESIGN.md for the contract and
//! README.md for how to run it.

pub mod actors;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod domain;
pub mod fuzz;
pub mod http;
pub mod passwords;
pub mod payment_service;
pub mod persistence;
pub mod seed;
pub mod telemetry;
pub mod users;
