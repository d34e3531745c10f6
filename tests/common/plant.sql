-- Look-alikes an unprivileged role plants in public (tests/search_path.rs, tests/citus.rs):
-- each one, when run, raises a WARNING 'HIJACKED ...' and records itself in public.hijack_log.
CREATE TABLE public.hijack_log (who text, what text);
GRANT INSERT, SELECT ON public.hijack_log TO PUBLIC;
CREATE FUNCTION public.hijacked(what pg_catalog.text) RETURNS pg_catalog.bool LANGUAGE plpgsql AS $f$
BEGIN
    RAISE WARNING 'HIJACKED as %: %', current_user, what;
    INSERT INTO public.hijack_log VALUES (current_user, what);
    RETURN true;
END $f$;

-- Every binary operator of pg_catalog between common types, shadowed.
DO $do$
DECLARE r record;
BEGIN
    FOR r IN
        SELECT o.oid, o.oprname, o.oprleft::pg_catalog.regtype::pg_catalog.text AS l,
               o.oprright::pg_catalog.regtype::pg_catalog.text AS r,
               o.oprresult::pg_catalog.regtype::pg_catalog.text AS res, p.proname
          FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) o.oprcode
         WHERE o.oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
           AND o.oprkind OPERATOR(pg_catalog.=) 'b'
           AND o.oprleft::pg_catalog.regtype::pg_catalog.text OPERATOR(pg_catalog.=) ANY (ARRAY[
                 'text', 'name', 'smallint', 'integer', 'bigint', 'oid', 'boolean', 'xid', 'tid',
                 'real', 'double precision', 'numeric', 'jsonb', 'uuid', '"char"', 'character',
                 'anyarray', 'anyelement', 'anyenum', 'regclass', 'regtype', 'text[]', 'real[]',
                 'timestamp with time zone', 'interval'])
           AND o.oprright::pg_catalog.regtype::pg_catalog.text OPERATOR(pg_catalog.=) ANY (ARRAY[
                 'text', 'name', 'smallint', 'integer', 'bigint', 'oid', 'boolean', 'xid', 'tid',
                 'real', 'double precision', 'numeric', 'jsonb', 'uuid', '"char"', 'character',
                 'anyarray', 'anyelement', 'anyenum', 'regclass', 'regtype', 'text[]', 'real[]',
                 'timestamp with time zone', 'interval'])
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE FUNCTION public.shadow_op_%s(a %s, b %s) RETURNS %s LANGUAGE plpgsql AS %L',
            r.oid, r.l, r.r, r.res,
            pg_catalog.format('BEGIN PERFORM public.hijacked(%L); RETURN pg_catalog.%I(a, b); END',
                              'operator ' OPERATOR(pg_catalog.||) r.oprname, r.proname));
        EXECUTE pg_catalog.format('CREATE OPERATOR public.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = public.shadow_op_%s)',
                                  r.oprname, r.l, r.r, r.oid);
    END LOOP;
END $do$;

-- Common functions, every plain (not set-returning, not variadic) signature of each.
DO $do$
DECLARE r record; i int; args text; call text;
BEGIN
    FOR r IN
        SELECT p.oid, p.proname, p.proargtypes::pg_catalog.oid[] AS types,
               p.prorettype::pg_catalog.regtype::pg_catalog.text AS ret
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
           AND p.prokind OPERATOR(pg_catalog.=) 'f' AND NOT p.proretset
           AND p.provariadic OPERATOR(pg_catalog.=) 0
           AND p.proname OPERATOR(pg_catalog.=) ANY (ARRAY[
                 'now', 'format', 'quote_ident', 'quote_literal', 'format_type', 'array_to_string',
                 'position', 'substring', 'substr', 'length', 'lower', 'upper', 'btrim', 'replace',
                 'concat_ws', 'hashtext', 'pg_try_advisory_lock', 'pg_advisory_unlock',
                 'pg_try_advisory_xact_lock', 'to_jsonb', 'jsonb_build_object', 'row_to_json',
                 'pg_get_userbyid', 'has_table_privilege', 'has_column_privilege', 'pg_has_role',
                 'current_setting', 'set_config', 'textlen', 'texteq', 'int4eq', 'nameeq', 'oideq',
                 'array_length', 'cardinality', 'array_position', 'pg_relation_size', 'string_to_array',
                 'pg_extension_config_dump', 'aclexplode', 'encode', 'decode', 'md5', 'sha256',
                 'array_append', 'array_cat', 'regexp_replace', 'pg_sleep', 'clock_timestamp',
                 'statement_timestamp', 'txid_current', 'pg_backend_pid', 'version'])
           AND NOT EXISTS (
                 SELECT FROM pg_catalog.unnest(p.proargtypes::pg_catalog.oid[]) t(oid)
                   JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) t.oid
                  WHERE ty.typtype OPERATOR(pg_catalog.=) 'p'
                    AND ty.typname::pg_catalog.text OPERATOR(pg_catalog.<>) ALL (ARRAY['anyelement', 'anyarray', 'anynonarray', 'anyenum']))
           AND (SELECT ty.typtype FROM pg_catalog.pg_type ty WHERE ty.oid OPERATOR(pg_catalog.=) p.prorettype)
               OPERATOR(pg_catalog.<>) 'p'
    LOOP
        args := ''; call := '';
        FOR i IN 1 .. COALESCE(pg_catalog.array_length(r.types, 1), 0) LOOP
            args := args OPERATOR(pg_catalog.||) CASE WHEN i OPERATOR(pg_catalog.>) 1 THEN ', ' ELSE '' END
                    OPERATOR(pg_catalog.||) 'a' OPERATOR(pg_catalog.||) i OPERATOR(pg_catalog.||) ' '
                    OPERATOR(pg_catalog.||) r.types[i]::pg_catalog.regtype::pg_catalog.text;
            call := call OPERATOR(pg_catalog.||) CASE WHEN i OPERATOR(pg_catalog.>) 1 THEN ', ' ELSE '' END
                    OPERATOR(pg_catalog.||) 'a' OPERATOR(pg_catalog.||) i;
        END LOOP;
        BEGIN
            EXECUTE pg_catalog.format(
                'CREATE FUNCTION public.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L', r.proname, args, r.ret,
                pg_catalog.format('BEGIN PERFORM public.hijacked(%L); RETURN pg_catalog.%I(%s); END',
                                  'function ' OPERATOR(pg_catalog.||) r.proname, r.proname, call));
        EXCEPTION WHEN duplicate_function OR invalid_function_definition OR datatype_mismatch THEN
            NULL;  -- a signature plpgsql cannot copy: leave it
        END;
    END LOOP;
END $do$;

-- Aggregates.
CREATE FUNCTION public.count_step(s pg_catalog.int8) RETURNS pg_catalog.int8 LANGUAGE plpgsql AS
  $f$ BEGIN PERFORM public.hijacked('aggregate count(*)'); RETURN s OPERATOR(pg_catalog.+) 1; END $f$;
CREATE AGGREGATE public.count(*) (SFUNC = public.count_step, STYPE = pg_catalog.int8, INITCOND = '0');
CREATE FUNCTION public.string_agg_step(s pg_catalog.text, v pg_catalog.text, d pg_catalog.text) RETURNS pg_catalog.text
  LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.hijacked('aggregate string_agg'); RETURN v; END $f$;
CREATE AGGREGATE public.string_agg(pg_catalog.text, pg_catalog.text) (SFUNC = public.string_agg_step, STYPE = pg_catalog.text);
-- What reading a model's task prompts aggregates with (jsonb_object_agg of two texts would
-- take this exact match over pg_catalog's ("any", "any") one).
CREATE FUNCTION public.jsonb_object_agg_step(s pg_catalog.jsonb, k pg_catalog.text, v pg_catalog.text) RETURNS pg_catalog.jsonb
  LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.hijacked('aggregate jsonb_object_agg'); RETURN s; END $f$;
CREATE AGGREGATE public.jsonb_object_agg(pg_catalog.text, pg_catalog.text)
  (SFUNC = public.jsonb_object_agg_step, STYPE = pg_catalog.jsonb, INITCOND = '{}');

-- Domains named like built-in types: a cast to "text" that resolves here runs the check.
DO $do$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['text', 'name', 'int2', 'int4', 'int8', 'oid', 'bool', 'jsonb', 'float4',
                             'float8', 'tid', 'xid', 'regclass', 'numeric', 'uuid'] LOOP
        EXECUTE pg_catalog.format('CREATE DOMAIN public.%I AS pg_catalog.%I CHECK (public.hijacked(%L))',
                                  t, t, 'domain ' OPERATOR(pg_catalog.||) t);
    END LOOP;
END $do$;
