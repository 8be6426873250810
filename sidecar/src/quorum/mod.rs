//! The quorum store: leaderless, linearizable compare-and-set registers (CASPaxos).
//!
//! # Protocol and why it is safe
//!
//! Every register is an independent single-decree-at-a-time CASPaxos instance (Rystsov,
//! "CASPaxos: Replicated State Machines without logs", 2018). Any sidecar can propose.
//! A round with ballot `b` (ordered by `(round, proposer id)`, unique per proposer):
//!
//! 1. **Prepare**: acceptors promise not to accept ballots below `b` and report their highest
//!    accepted `(ballot, value)`. With a read quorum of promises, the proposer takes the value of
//!    the highest accepted ballot as the current value.
//! 2. **Accept**: the proposer applies the change function and asks acceptors to accept
//!    `(b, new)`; they do unless they promised a higher ballot. With a write quorum of accepts
//!    the change is chosen and the caller is answered.
//!
//! Safety is Paxos's: every read quorum intersects every write quorum (`R + W > N`), so a
//! prepare quorum for `b' > b` sees any value chosen at `b`, and ballots are totally ordered
//! and unique, so two proposers never both win with different values on the same state: the
//! second one's prepare sees the first one's accepted value and builds on it. Acceptors persist
//! promises and accepted values (fsync, see [`store`]) before they answer, so `kill -9` loses
//! nothing acknowledged.
//!
//! **Chained and pipelined rounds** ([`round`]): after a round that ran Prepare, a proposer's
//! next rounds skip it and propose at the immediate successor of the last ballot (ballots carry a
//! step, and nothing lies between a ballot and its successor), up to four at once. The value
//! proposed at a ballot is always safe at its successor, so no Prepare is needed; [`round`] gives
//! the argument and the counterexample for non-adjacent ballots. If anyone prepared in between,
//! the accept fails and the proposer falls back to Prepare. Ballots also carry the proposer
//! process's random incarnation, so a restarted proposer never reuses a ballot.
//!
//! **Batching**: concurrent changes to one register on one sidecar are applied in order to the
//! value of a single round ([`change::apply_batch`]); acceptors group-commit every message that
//! arrives while the disk is busy into one fsync ([`store`]); and the Prepares (Accepts) of
//! different registers bound for one member at once travel in one message ([`bundle`]: a
//! transport bundle, each register still its own instance, so nothing below changes).
//!
//! **Ambiguity**: a change that reached an acceptor and then missed its deadline may still be
//! chosen later (a later round adopts the highest accepted value). Its caller gets
//! [`change::ChangeError::OutcomeUnknown`], never "not applied"; writes carry ids so a retry is
//! applied once ([`change`]). The typed API that log streams, the divider and the sequencer use is
//! [`register`].
//!
//! **Contention** between proposers ([`route`]): a sidecar proposes its own changes until it
//! loses a round on that register to another proposer's ballot; it then hands the losing changes
//! to the winner and, for a while, forwards the register's changes to the register's *home*
//! member (a hash of the key over the live members); so under contention one proposer runs a
//! register's rounds, and a lone writer pays no extra hop. This is routing only: any sidecar may still propose, and a rejected round
//! retries with a higher ballot after a randomized exponential backoff, so two proposers cannot
//! keep pre-empting each other forever (with probability 1 one of them completes both phases
//! inside the other's backoff).
//!
//! **Lost data** ([`catchup`]): a member whose data directory is empty does not vote (it
//! refuses Prepare and Accept) until it has (1) *fenced* its new incarnation on enough peers
//! that no round counting a promise of its old incarnation can still reach a write quorum
//! (accepts carry the incarnations of the promises they rely on, and fenced acceptors refuse
//! stale ones), and (2) copied the highest accepted state of every register from a set of
//! caught-up members that meets every write quorum outside itself. Its state is then one an
//! acceptor could have reached by receiving those accepts late, which Paxos tolerates.
//!
//! **Membership changes** ([`migration`], [`crate::membership`]): from configuration A to B the
//! cluster goes through a joint epoch where every quorum must be a quorum of A *and* of B
//! (intersecting every quorum of either), then each member rewrites every register through a
//! joint quorum (so a quorum of B alone holds it), and only then B alone. Peers reject messages
//! from another epoch, so rounds of an older configuration cannot complete after the change.

pub mod acceptor;
pub mod ballot;
pub mod bundle;
pub mod catchup;
pub mod change;
pub mod migration;
pub mod proposer;
pub mod register;
pub mod round;
pub mod route;
pub mod store;
pub mod transport;
pub mod wal;

pub use ballot::Ballot;
