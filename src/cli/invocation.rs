//! What every command shares about how it was invoked: the exit code of bad
//! usage, and who runs it.

/// Exit code for bad usage or invalid configuration.
pub(crate) const EXIT_USAGE: u8 = 2;

/// Who runs the command (`$USER`), the `sender` of the pings it asks for.
pub(super) fn local_user() -> Option<String> {
    std::env::var("USER").ok().filter(|u| !u.is_empty())
}
