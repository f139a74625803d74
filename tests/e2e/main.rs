mod login;
mod dns;
