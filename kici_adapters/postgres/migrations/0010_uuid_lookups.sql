-- 0010_uuid_lookups: look rows up by an id given as text without giving up the uuid column's index.
--
-- Ids reach the database as text from the admin API, agents and other processes. Comparing `col::text` with
-- them matched exactly the canonical form (lower-case, hyphenated) and never failed on garbage, but it hid the
-- column from its index: every lookup of a run, its jobs, steps or check runs read the whole table.
-- kici_uuid turns the canonical form into the uuid and anything else into NULL (which matches nothing), so
-- `col = kici_uuid(<text>)` keeps both properties and uses the index; kici_uuids does the same for an array.
CREATE FUNCTION kici_uuid(t text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
  SELECT CASE WHEN t ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN t::uuid END
$$;

CREATE FUNCTION kici_uuids(t text[]) RETURNS uuid[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
  SELECT coalesce(array_agg(u), '{}') FROM (SELECT kici_uuid(x) AS u FROM unnest(t) AS x) AS c WHERE u IS NOT NULL
$$;
