-- The load mix (tests/load.rs, tests/faults.rs): 90% verify, 5% issue, 5% lifecycle
-- changes, each client on its own slots (:slots of them; see schema.sql).
\set r random(1, 100)
\set slot random(1, :slots)
\set choice random(1, 100)
\if :r <= 90
SELECT load.verify(:client_id, :slot);
\elif :r <= 95
SELECT load.mint(:client_id, :slot);
\else
SELECT load.lifecycle(:client_id, :slot, :choice);
\endif
