-- pg_bailian 0.1.0 -> 0.2.0, run by ALTER EXTENSION pg_bailian UPDATE.
-- Never edit this file once 0.2.0 is released: a later change to the SQL surface goes into
-- the next version's update script (see DEVELOPERS.md). tests/upgrade.rs checks that a
-- database updated through every script equals a fresh CREATE EXTENSION of the current version.

\echo Use "ALTER EXTENSION pg_bailian UPDATE" to load this file. \quit
