//! The work divider: keys of a named divider divided among members (app instances) in
//! proportion to their affinity, with fenced ownership and a start/stop/confirm handoff.
//!
//! Each sidecar runs the divider for the app sessions opened on it (`ordo.v1.Divider/Watch`).
//! Sidecars never talk to each other about the divider: all coordination goes through registers
//! of the quorum store ([`crate::quorum::register`]), whose versions strictly increase per key,
//! deletes included, and are therefore fencing tokens.
//!
//! # Register layout (divider `D`)
//!
//! | register | value | written by |
//! | --- | --- | --- |
//! | `divider/D/members/M` | [`records::MemberRecord`]: session, affinity, address, state `live`, `left` or `expired` | M's sidecar (join, renew, affinity, leave); any sidecar (`expired`) |
//! | `divider/D/owners/N` | [`records::OwnerBucket`]: the [`records::OwnerRecord`] (member, session, state `owned` or `released`, token) of every key of bucket `N` | claiming sidecars; owners' sidecars (`released`) |
//! | `divider/D/keys/K` | empty: a key added at run time | `AddKeys` / `RemoveKeys` |
//! | `divider/D/removed/K` | empty: a static key removed at run time | `RemoveKeys`, `Release(DONE)` |
//!
//! The key set is the static keys of the divider config (the configured divider only), plus the
//! listed `keys/`, minus the listed `removed/`, read page by page ([`keys`]).
//!
//! **Owner buckets.** A key's owner record lives in bucket register `owners/N`, `N` a stable hash
//! of the key modulo [`records::OWNER_BUCKETS`] (256; part of the layout, so every sidecar of a
//! divider must agree on it). A bucket holds the records of about `keys / 256` keys (~400 and
//! ~10 KB at 100k keys), and one compare-and-set of it claims or releases any number of them:
//! after a member dies, each claimer takes its share of the dead member's keys in at most 256
//! writes instead of one Paxos instance per key. Buckets are never deleted; a released record
//! of a key no longer in the key set is pruned by the next write of its bucket (an absent record
//! is claimable, as a released one is).
//!
//! **One lease per member, not per key.** A member's right to every key it owns rests on its
//! member record alone: the owner record of K names `(M, session)`, and it is valid while
//! `members/M` is `live` with that session. Renewing a member is one compare-and-set of its
//! member record every `lease / 4`, whatever the number of keys, so keeping 100k keys owned
//! costs the same quorum writes per second as keeping 100. Writes per key happen only when a
//! key changes hands (claim, release).
//!
//! **The fencing token** of a key is the version of its bucket written by the claim that made
//! the current owner, plus [`records::TOKEN_BASE`] (2^32): the claim reads the bucket at version
//! `v` and writes it by a compare-and-set at `v`, recording token
//! `max(v + TOKEN_BASE, highest token in the bucket) + 1` (which is the new version plus
//! `TOKEN_BASE`, buckets never being deleted) in the records it takes. It is handed to the app
//! in `Start{key, token}`, kept in the record, and checked on `ConfirmStop` and `Release`. The
//! base keeps tokens above those of the per-key layout this one replaced (a key's own register
//! version), so a downstream's highest-token check survives the upgrade.
//!
//! # The handoff
//!
//! Every sidecar computes the same assignment, [`ordo_contract::assign::assign`], from the
//! sorted key set and the live members with their affinities (affinity `0` = no keys, otherwise
//! keys in proportion to it). For each local session:
//!
//! 1. a key it owns that is now assigned elsewhere (or removed) gets `Stop{key, token,
//!    REASSIGNED}`; on `ConfirmStop(key, token)` the sidecar writes the key's record `released`
//!    (in its bucket, when the record still names this session and token). If no confirm comes within the stop timeout, the app gets
//!    `Stop{key, token, TIMEOUT}` (its token is dead from now on) and the record is released
//!    anyway ([`handoff`]);
//! 2. a key assigned to it that it does not own is claimed once its record is absent,
//!    `released`, or names a session whose member record is not `live` with that session: a
//!    compare-and-set of its bucket from the version read writes `owned` by this session with
//!    the new token, and the app gets `Start{key, token}`.
//!
//! **Claims at scale.** A pass groups the keys it claims by bucket and claims each bucket's
//! keys in one read and one compare-and-set at the version read ([`runtime`]'s `claim_bucket`),
//! judging each key's record as above; releases are grouped the same way. When the
//! compare-and-set conflicts (another claimer or a release wrote the bucket meanwhile), the
//! reply carries what the bucket holds, a linearizable read like any other, and the claim judges
//! every key again on it, up to 4 times per pass. Up to 512 buckets are in flight at once, each
//! its own register (their quorum messages travel in bundles, [`crate::quorum::bundle`]), in a
//! random order per pass so that two claimers rarely meet on a bucket; a pass issues claims for
//! at most a tick, then the table is refreshed at once and the rest follow. A claim that found
//! a key owned by a live session does not retry it every pass: member records carry the number
//! of releases their session wrote ([`records::MemberRecord::released`]; a release renews the
//! record at once), and the key waits until that count moves or the session dies. A hint
//! only: every claim is still the compare-and-set above.
//!
//! **Sessions known dead** ([`runtime`]'s `DeadSessions`) save a member read per claimed record:
//! a session named by a member record that is `left` or `expired`, or seen live by one refresh
//! and not by a later one. Sessions never come back, so a claim may take a key whose record
//! names one of them. What never goes in: a session merely absent from a read, which may
//! predate its join (the double owner the checker once caught).
//!
//! **Planned leave (SIGTERM).** Before its servers stop, the sidecar makes every session on it
//! leave ([`runtime::Dividers::leave_all`]): `Stop{LEAVING}` for every key at once, and
//! affinity 0 written meanwhile, so every other sidecar moves the keys in its table at once
//! (the Stops do not wait for that write: a slow quorum would hold them back); each
//! release written as the app confirms (or at the stop timeout, the app being told its token
//! is dead), then `left`. The new owners claim each key at their next refresh after its
//! release (the release count tells them), well before an expiry could. Bounded by the stop
//! timeout plus [`runtime::LEAVE_SLACK`]; the operator's grace period covers it and the drain.
//!
//! **An app that went away** (its `Watch` stream closed: the app ended it, was cancelled, or its
//! process died) can no longer be told anything; by the protocol it stops every key when its
//! stream ends (the client handle yields `LeaseExpired`). Its session is no longer renewed;
//! keys it confirmed or released are released by the release loop at once, and every other key is
//! treated as told to stop at that moment: released once the stop timeout has passed (a key
//! already stopping keeps its earlier deadline), so an app still finishing a key gets the same
//! bound as for a Stop it was sent. Once nothing is held the session writes `left`; if the right
//! ends first, `left` is written then, as before. A SIGTERM'd sidecar waits for these sessions
//! too (affinity 0 first, so the others' tables move the keys at once). *Test*:
//! `keys_of_an_app_that_went_away_move_after_the_stop_timeout_not_the_lease` (lease 12 s, stop
//! timeout 1 s: the keys moved 3.4 s after the app went away, 2.1 s with a SIGTERM right after;
//! 13.2 s and 12.7 s with such sessions kept fenced until their right ended; and no new owner
//! starts a key before the stop timeout: with the keys released at once, one started 0.25 s
//! after the app went away and the test failed).
//!
//! # Locks (which are held across an await, and why that is safe)
//!
//! App calls (`ConfirmStop`, `Release`, `ListAssigned`, `GetAffinity`, `Cancel`, `Flush`'s
//! waits) take `sessions` only, and `sessions` is never held across a register call: renewals,
//! re-joins, affinity changes, joins and leaves take what to write under it, write without it,
//! and apply the outcome under it again ([`runtime`]'s `write_member`). So a confirm never waits
//! for a quorum round. Releases are written by their own loop (not behind a refresh, which a
//! slow quorum can stall), and confirms arriving while a release is being written are folded
//! into its next pass, one compare-and-set per bucket for all of them. Locks held across awaits:
//!
//! - `record_writes`: across every member-record write of the sessions on this sidecar (one
//!   writer per record: nothing else can move the session, version or affinity meanwhile;
//!   a release landing meanwhile raises the release count, which the renewal it triggers
//!   writes next). Taken by the renewal loop and by the calls that write a member record
//!   (`Watch`, `SetAffinity`, `AlterAffinity`, `Flush`'s first step, the SIGTERM leave), which
//!   wait at most for one round of renewals; never by the calls above.
//! - `view`: across a refresh (member reads, expiries, marker deletes); no app call takes it.
//! - `keyset`: across the key-set counter read and the key lists (reads): `ListKeys` waits for
//!   a refresh reading the same.
//!
//! Every other lock (`dead`, `blocked`, `observed`, the divider map) is a short synchronous one.
//! *Test*: `sidecar/tests/divider_runtime.rs::confirms_never_wait_for_a_quorum_write_and_are_released_by_one_write_per_bucket`
//! (the network stalled while a renewal is in flight: 2,048 confirms return at once, and their
//! releases cost at most 2 writes per bucket; fails with the renewal's write holding `sessions`:
//! the first confirm waits, and with one release write per key: 9 writes for a bucket of 9).
//!
//! # Mixed versions (the per-key owner layout)
//!
//! Sidecars before owner buckets stored a key's owner in `divider/D/owner/K` and cannot see
//! buckets; sidecars of the bucket layout cannot see those records. Side by side, a key could
//! get two owners, so a divider is upgraded with every pod stopped. The guard: this layout tags
//! its member records `m4` ([`records::MemberRecord::encode`]); a live record in an older format
//! (`m1`-`m3`, which every older sidecar writes and keeps renewing; the first bucket-layout
//! sidecars wrote `m3` too, so they count as old) makes this sidecar serve no keys of the
//! divider: every key held here is stopped (`Stop{LEASE_LOST}`, the session re-joins and claims
//! nothing), `Watch` is refused (FAILED_PRECONDITION naming the old members; a first `Watch`
//! waits for the first member read), an error is logged and `divider_per_key_layout_members`
//! says how many. It costs nothing in the steady state: the member records are read every poll
//! anyway. Stale records of stopped old pods are expired after a lease like any member's. The
//! other direction cannot be guarded (old sidecars cannot be changed): an old sidecar cannot
//! decode `m4` records, skips those members, and claims keys through its own per-key records;
//! started among new ones, it can own a key a new sidecar holds until that sidecar's next
//! member read (at most a poll) stops it. *Test*:
//! `sidecar/tests/divider_runtime.rs::a_live_member_of_the_per_key_layout_stops_every_key_here_until_it_is_gone`
//! (an `m3` record written as an old sidecar writes it; fails with the guard never blocking).
//!
//! **Handback markers** are deleted once every session they name is known dead (they change
//! no assignment then), at the version read, so a handback landing meanwhile keeps them.
//! *Test*: `affinity_zero_gets_nothing_flush_moves_everything_and_cancel_leaves` (the gauge
//! `ordo_divider_handback_markers` counts the marker while its session lives and drops to 0
//! after; fails with the collection disabled).
//!
//! A member record is marked `expired` by any sidecar that saw its version unchanged for
//! `lease + drift margin` on its own monotonic clock ([`lease::Observed`]), the lease and margin
//! being at least the holder's own, which its record carries
//! ([`records::MemberRecord::observer_timing`]: sidecars need not share their timing flags), with a
//! compare-and-set at the version it saw, so a renewal landing in between makes the expiry
//! fail and the other way round: a renewal can never revive an expired session.
//!
//! # Guarantees, why they hold, and the test that catches their violation
//!
//! The e2e tests are in `e2e/tests/divider.rs`: toy apps record every `Start`, `Stop`,
//! `ConfirmStop` and token, and `check_history` verifies them.
//!
//! 1. **Tokens strictly increase per key.** A claim of K reads K's bucket at version `v` and
//!    writes it by a compare-and-set at `v` with token
//!    `max(v + B, highest token in the bucket) + 1` (`B` = `TOKEN_BASE`). Every earlier token of K was written by an earlier write of the
//!    bucket, at a version at most `v`, and it is at most that write's version plus `B` (by
//!    induction: `max(v' + B, highest) + 1` is `v' + B + 1` while the bucket holds no token
//!    above its version plus `B`, which each write keeps true),
//!    so the new token is above it; a pruned record took nothing with it that `v` does not
//!    bound. *Test*: `check_history`: per key, the tokens of successive `Start`s strictly
//!    increase (checked on purpose: with a re-claimed key keeping its old token, five of the
//!    e2e tests fail, `never_two_owners_under_kill9_sigstop_affinity_and_key_changes` among
//!    them: "token 1 after 1").
//!
//! 2. **Never two owners.** A claim is a compare-and-set of K's bucket at the version read, taking
//!    K only when its record in that read is absent, `released`, or names a dead session; no
//!    write of the bucket lies between the read and the claim, so between two claims of K the
//!    earlier owner either (a) wrote
//!    `released`, which its sidecar does only after the app confirmed the stop or after the
//!    stop timeout told the app its token is dead, or (b) lost its session: its member record is
//!    `left` (written by its sidecar only after its right ended), `expired`, or names a newer
//!    session. Sessions never come back, and a claim concludes "dead" only from a read of the
//!    member record made after it read K's bucket (a member list from earlier in the tick may
//!    predate the owner's join). In case `expired`, the expiring sidecar saw the member's
//!    version unchanged for `lease + margin` on its own clock, from the moment it first read
//!    that version, and its compare-and-set at that version succeeded, so no later renewal
//!    exists. The holder's right ends at `t_send + lease - margin` on the holder's clock,
//!    `t_send` being the send time of its last acknowledged renewal, which precedes the
//!    expirer's first read of that version. With clock rates within `rho` of real time, the
//!    holder's right ends before the claim while `2 * margin > 2 * rho * lease` plus the time
//!    to deliver a message on the local socket: with the defaults (lease 3 s, margin 300 ms)
//!    any `rho` below 5% holds. The app is told its right's end in advance: every renewal sends
//!    `Lease{valid_for_ms}`, and the app (the client library, and the toy app in the tests)
//!    stops every key when that time passes without a new one, so a paused or dead sidecar
//!    cannot leave its app running (`Lease.valid_for_ms` is relative to its sending; the
//!    margin also covers its delivery). *Tests*:
//!    `never_two_owners_under_kill9_sigstop_affinity_and_key_changes` (no overlapping
//!    ownership intervals per key under `kill -9` of a sidecar, SIGSTOP of a sidecar past its
//!    lease, `kill -9` of a quorum member, an affinity change, keys added and removed, and a
//!    member that never confirms; a toy downstream that keeps the highest token per key rejects
//!    every write of the deposed (zombie) owner),
//!    `a_member_cut_off_from_the_quorum_stops_its_keys_before_others_take_them` (fault proxy),
//!    `scaling_2_to_5_to_2_members_with_flush_before_leaving`. The checker caught a real double owner while this was built (claims
//!    trusted a member list read before the owner joined).
//!
//! 3. **A new owner starts only after a confirmed stop or the old owner's right ended**: the
//!    argument of 2 (a claim needs `released` or a dead session). *Test*: as 2, plus
//!    `handoff` unit tests (no release before the confirm, the app's release or the timeout);
//!    `affinity_zero_gets_nothing_flush_moves_everything_and_cancel_leaves` (Flush returns only
//!    once every stop is confirmed and the keys are owned elsewhere; HANDBACK, DONE, Cancel).
//!
//! 4. **A member that cannot reach the quorum stops its keys before its lease can expire.** The
//!    holder computes its right's end from acknowledged renewals only (an unknown outcome
//!    extends nothing) on `tokio::time::Instant` (monotonic); renewals run in their own loop,
//!    never behind a tick's claims; when the right ends the sidecar sends `Stop{LEASE_LOST}`
//!    for every key and re-joins with a new session. A renewal acknowledged only after the
//!    right ran out does the same (the app stopped every key at its own deadline; keeping them
//!    held would leave them unworked until the next move). *Test*: `lease` unit tests (the holder's
//!    right ends `2 * margin` before any observer may act); the SIGSTOP and cut-off cases of
//!    the e2e tests; `client_handle_follows_routes_and_expires_the_lease_on_the_app_side` (the
//!    client handle yields `LeaseExpired` within the lease when its sidecar is paused).
//!
//! 5. **Every key has an owner within a bound while a live member with affinity > 0 exists**:
//!    observers read the member records every `poll = lease / 8`, so an observer first reads a
//!    renewal at most a poll after it was written; it schedules a refresh at the exact moment
//!    `first_seen + lease + margin` rather than waiting for the next poll, expires the member
//!    by one compare-and-set, and claims its keys in the same pass (a read and a
//!    compare-and-set per bucket, at most 256). After `kill -9`, which
//!    comes at most a renewal interval (`lease / 4`) after the last renewal: between
//!    `lease + margin - lease / 4` and `lease + margin + poll` (defaults 2.55 s to 3.675 s),
//!    plus the claims: a read and a compare-and-set per bucket and claimer (more when two
//!    claimers meet on a bucket), whatever the keys: 33,550 orphans of a 100k-key divider
//!    claimed by two survivors in 0.4-0.9 s, 3,050-3,325 in 0.15-0.21 s, on the loaded 2-core test
//!    machine (release, `ordo-bench ownership`, which splits a recovery into detection and
//!    claims; one round per key took 6.4-8.4 s for the 33,550). After a
//!    planned move: the app's confirm
//!    time (at most the stop timeout) plus the release, a poll, and the claim.
//!    *Test*: the e2e test waits for full ownership after `kill -9` and checks the bound (with
//!    slack for a loaded machine); `sigterm_of_a_members_sidecar_hands_its_keys_over_before_any_lease_could_expire`
//!    (a planned leave moves the keys in less than a lease, every stop confirmed, no overlap;
//!    fails with the leave taken out of the shutdown path: 8.5 s).
//!    Register calls routed to a paused *quorum member* stall up to a second each
//!    (`quorum::route`), which slows takeovers while one is paused (~12 s measured); the e2e
//!    test pauses a client-role sidecar (the WorkDivider pod layout), where takeover took
//!    ~4.5 s.
//!
//!    Renewals and claims share the quorum: under overload (a first pass claiming tens of
//!    thousands of keys on a loaded machine) a renewal can miss its lease, so claims back off
//!    while a session has less than a tick of right left. Not yet measured in a release build.
//!
//! Checked on purpose: with claims ignoring a live owner, with observers expiring a member
//! after `lease / 2` instead of `lease + margin`, with every session read (live ones too)
//! trusted as dead by claims, and with a claim that conflicted writing its stale bucket over
//! the newer one (a compare-and-set at the version the conflict reported, without judging the
//! keys again: `scaling_2_to_5_to_2_members_with_flush_before_leaving` and
//! `a_member_cut_off_from_the_quorum_stops_its_keys_before_others_take_them` fail), the e2e
//! checker reports overlapping owners.
//!
//! Not covered: a sidecar whose clock runs more than `margin / lease` fast relative to the
//! others (the documented drift bound); an app that ignores its `Lease` deadline (its writes
//! are still rejected downstream by the fencing token).

//! # Modules
//!
//! [`records`] (register names and record encodings), [`lease`] (holder and observer clocks),
//! [`handoff`] (the stop state machine of one session's keys), [`keys`] (the key set),
//! [`table`] (the assignment table), [`runtime`] (sessions, the renewal, handoff and release loops, the
//! calls apps make), [`metrics`]. The gRPC adapter is `crate::api::app::divider`.

pub mod handoff;
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod records;
pub mod runtime;
pub mod table;
