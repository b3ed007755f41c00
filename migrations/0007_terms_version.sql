-- Every change of a drop's sale terms bumps its version. The edge's inventory keeps
-- the highest version it was given, so a push that lands late cannot roll the terms
-- back, and the origin acknowledges only the version it pushed.
ALTER TABLE drops ADD COLUMN terms_version BIGINT NOT NULL DEFAULT 1;
