-- ai_embed_column and ai_gen_column: fill a column of any table with a primary key, in
-- primary-key order, committing every batch_size rows. bailian.fill_column checks the
-- arguments and builds the statements for both; bailian.run_fill (Rust, src/functions/
-- column.rs) runs the job. Everything runs with the caller's rights.

CREATE PROCEDURE bailian.fill_column(
    kind text, proc text, table_name regclass, source_column name, target_column name,
    model_name text, batch_size int, prompt_template text, params jsonb)
LANGUAGE plpgsql AS $proc$
DECLARE
    pk_names text[];
    pk_types text[];
    src_type text;
    dst_type text;
    pk_list text;
    pk_text text;
    key_args text;
    key_args2 text;
    select_first text;
    select_next text;
    update_sql text;
    src_cond text;
    total bigint;
    dims int;
    model_dims int;
BEGIN
    IF table_name IS NULL OR source_column IS NULL OR target_column IS NULL OR model_name IS NULL THEN
        RAISE EXCEPTION '%: table_name, source_column, target_column and model_name must not be NULL', proc
            USING ERRCODE = '22004';
    END IF;
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > 100000 THEN
        RAISE EXCEPTION '%: batch_size must be between 1 and 100000, got %', proc, coalesce(batch_size::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF kind = 'gen' AND (prompt_template IS NULL OR position('{0}' IN prompt_template) = 0) THEN
        RAISE EXCEPTION '%: prompt_template must contain {0}, where the source text goes', proc
            USING ERRCODE = '22023';
    END IF;

    SELECT array_agg(quote_ident(a.attname) ORDER BY k.n), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.n)
      INTO pk_names, pk_types
      FROM pg_catalog.pg_index i
      CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = table_name AND i.indisprimary;
    IF pk_names IS NULL THEN
        RAISE EXCEPTION '%: table % has no primary key', proc, table_name
            USING ERRCODE = '55000',
                  HINT = 'Rows are filled in primary-key order, so that each batch can commit and a later CALL resumes; add a PRIMARY KEY.';
    END IF;

    SELECT format_type(atttypid, atttypmod) INTO src_type FROM pg_catalog.pg_attribute
     WHERE attrelid = table_name AND attname = source_column AND attnum > 0 AND NOT attisdropped;
    IF src_type IS NULL THEN
        RAISE EXCEPTION '%: source column "%" does not exist in %', proc, source_column, table_name USING ERRCODE = '42703';
    END IF;
    SELECT format_type(atttypid, atttypmod) INTO dst_type FROM pg_catalog.pg_attribute
     WHERE attrelid = table_name AND attname = target_column AND attnum > 0 AND NOT attisdropped;
    IF dst_type IS NULL THEN
        RAISE EXCEPTION '%: target column "%" does not exist in %', proc, target_column, table_name USING ERRCODE = '42703';
    END IF;
    IF kind = 'embed' THEN
        IF dst_type <> 'real[]' AND dst_type !~ '^vector(\(\d+\))?$' THEN
            RAISE EXCEPTION '%: target column "%" is %; allowed: real[], or vector where pgvector is installed',
                proc, target_column, dst_type USING ERRCODE = '42804';
        END IF;
        dims := substring(dst_type FROM '^vector\((\d+)\)$')::int;
        SELECT coalesce((m.params->>'dimension')::int, s.default_dimension) INTO model_dims
          FROM @extschema@.ai_models m JOIN @extschema@.ai_supported_models() s USING (model_type)
         WHERE m.model_name = fill_column.model_name;
        IF dims IS NOT NULL AND model_dims IS NOT NULL AND dims <> model_dims THEN
            RAISE EXCEPTION '%: target column "%" is %, but model "%" returns % dimensions',
                proc, target_column, dst_type, model_name, model_dims USING ERRCODE = '42804';
        END IF;
    ELSIF dst_type NOT IN ('text', 'character varying') AND dst_type !~ '^character varying\(\d+\)$' THEN
        RAISE EXCEPTION '%: target column "%" is %; allowed: text or varchar', proc, target_column, dst_type
            USING ERRCODE = '42804';
    END IF;

    -- Embedding an empty text is impossible: such rows are left alone rather than retried forever.
    src_cond := format('%I IS NOT NULL', source_column) || CASE WHEN kind = 'embed' THEN format(' AND %I::text <> %L', source_column, '') ELSE '' END;
    pk_list := array_to_string(pk_names, ', ');
    SELECT string_agg(format('%s::text', n), ', '),
           string_agg(format('$1[%s]::%s', i, pk_types[i]), ', '),
           string_agg(format('$2[%s]::%s', i, pk_types[i]), ', ')
      INTO pk_text, key_args, key_args2
      FROM unnest(pk_names) WITH ORDINALITY AS p(n, i);
    select_first := format(
        'SELECT ARRAY[%1$s], %2$I::text FROM %3$s WHERE %4$I IS NULL AND %5$s ORDER BY %6$s LIMIT $2 FOR UPDATE SKIP LOCKED',
        pk_text, source_column, table_name, target_column, src_cond, pk_list);
    select_next := format(
        'SELECT ARRAY[%1$s], %2$I::text FROM %3$s WHERE %4$I IS NULL AND %5$s AND (%6$s) > (%7$s) ORDER BY %6$s LIMIT $2 FOR UPDATE SKIP LOCKED',
        pk_text, source_column, table_name, target_column, src_cond, pk_list, key_args);
    -- Written by key, only if still empty and the source is what was sent: rows are read
    -- ahead and may be written after a commit released their lock.
    update_sql := format(
        'UPDATE %1$s SET %2$I = $1 WHERE (%3$s) = (%4$s) AND %2$I IS NULL AND %5$I::text = $3 RETURNING 1',
        table_name, target_column, pk_list, key_args2, source_column);

    EXECUTE format('SELECT count(*) FROM %s WHERE %I IS NULL AND %s', table_name, target_column, src_cond)
       INTO total;
    RAISE NOTICE '%: % rows of % to fill (% IS NULL, % has text), % per batch',
        proc, total, table_name, target_column, source_column, batch_size;
    CALL bailian.run_fill(kind, model_name, select_first, select_next, update_sql,
                          pk_list, target_column, total, batch_size, prompt_template, params);
END
$proc$;

CREATE PROCEDURE ai_embed_column(table_name regclass, source_column name, target_column name,
                                 model_name text, batch_size int DEFAULT 1000)
LANGUAGE plpgsql AS $$
BEGIN
    CALL bailian.fill_column('embed', 'ai_embed_column', table_name, source_column, target_column,
                             model_name, batch_size, NULL, NULL);
END
$$;

CREATE PROCEDURE ai_gen_column(table_name regclass, source_column name, target_column name,
                               model_name text, prompt_template text DEFAULT '{0}', batch_size int DEFAULT 100,
                               params jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    CALL bailian.fill_column('gen', 'ai_gen_column', table_name, source_column, target_column,
                             model_name, batch_size, prompt_template, params);
END
$$;
