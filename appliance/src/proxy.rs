//! Protocol proxies, one per connection kind. Each takes an authorized,
//! audited tunnel stream and its upstream; none of them makes policy
//! decisions about *whether* to connect (that is the gate's job).

pub use tunnel_lite::relay;
pub mod tcp;
