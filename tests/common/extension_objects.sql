-- Everything a user can observe of the pg_bailian extension in the current database, one line
-- per fact, in an order that does not depend on OIDs or on the order objects were made in.
-- Two databases whose lists are equal have the same functions (signatures, defaults,
-- volatility, strictness, parallel safety, cost, settings, bodies), tables (columns, defaults,
-- constraints, indexes, triggers, policies), views, schemas, grants, owners and comments.
-- ACLs are sorted, since the order of aclitems follows the order the grants were made in.
WITH ext AS (
    SELECT e.oid, e.extconfig, e.extcondition FROM pg_catalog.pg_extension e WHERE e.extname = 'pg_bailian'
), members AS (
    SELECT d.classid, d.objid
    FROM pg_catalog.pg_depend d, ext
    WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
), rels AS (
    SELECT c.* FROM members m JOIN pg_catalog.pg_class c ON m.classid = 'pg_catalog.pg_class'::regclass AND c.oid = m.objid
)
SELECT line FROM (
    SELECT 'member ' || pg_catalog.pg_describe_object(m.classid, m.objid, 0) AS line FROM members m
    UNION ALL
    SELECT 'config ' || c::regclass::text || ' where ' || coalesce(w, '')
    FROM ext, unnest(ext.extconfig, ext.extcondition) AS u(c, w)
    UNION ALL
    SELECT format(E'function %s\n%s\nowner %s acl %s\ncomment %s',
                  p.oid::regprocedure, pg_catalog.pg_get_functiondef(p.oid), p.proowner::regrole,
                  coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(p.proacl) a), 'default'),
                  coalesce(pg_catalog.obj_description(p.oid, 'pg_proc'), '<none>'))
    FROM members m JOIN pg_catalog.pg_proc p ON m.classid = 'pg_catalog.pg_proc'::regclass AND p.oid = m.objid
    UNION ALL
    SELECT format('relation %s kind %s owner %s acl %s rls %s/%s options %s comment %s',
                  c.oid::regclass, c.relkind, c.relowner::regrole,
                  coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(c.relacl) a), 'default'),
                  c.relrowsecurity, c.relforcerowsecurity, c.reloptions,
                  coalesce(pg_catalog.obj_description(c.oid, 'pg_class'), '<none>'))
    FROM rels c
    UNION ALL
    SELECT format('view %s as %s', c.oid::regclass, pg_catalog.pg_get_viewdef(c.oid))
    FROM rels c WHERE c.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('column %s.%s %s %s not null %s default %s acl %s comment %s',
                  c.oid::regclass, a.attnum, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
                  a.attnotnull, pg_catalog.pg_get_expr(ad.adbin, ad.adrelid),
                  coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(a.attacl) x), 'default'),
                  coalesce(pg_catalog.col_description(c.oid, a.attnum), '<none>'))
    FROM rels c
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
    UNION ALL
    SELECT format('constraint %s %s %s', c.oid::regclass, k.conname, pg_catalog.pg_get_constraintdef(k.oid))
    FROM rels c JOIN pg_catalog.pg_constraint k ON k.conrelid = c.oid
    UNION ALL
    SELECT format('index %s', pg_catalog.pg_get_indexdef(i.indexrelid))
    FROM rels c JOIN pg_catalog.pg_index i ON i.indrelid = c.oid
    UNION ALL
    SELECT format('trigger %s', pg_catalog.pg_get_triggerdef(t.oid))
    FROM rels c JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT format('policy %s %s %s %s using %s check %s', c.oid::regclass, p.polname, p.polcmd, p.polpermissive,
                  pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))
    FROM rels c JOIN pg_catalog.pg_policy p ON p.polrelid = c.oid
    UNION ALL
    SELECT format('schema %s owner %s acl %s comment %s', n.nspname, n.nspowner::regrole,
                  coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(n.nspacl) a), 'default'),
                  coalesce(pg_catalog.obj_description(n.oid, 'pg_namespace'), '<none>'))
    FROM members m JOIN pg_catalog.pg_namespace n ON m.classid = 'pg_catalog.pg_namespace'::regclass AND n.oid = m.objid
    UNION ALL
    SELECT format('type %s owner %s acl %s comment %s', t.oid::regtype, t.typowner::regrole,
                  coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(t.typacl) a), 'default'),
                  coalesce(pg_catalog.obj_description(t.oid, 'pg_type'), '<none>'))
    FROM members m JOIN pg_catalog.pg_type t ON m.classid = 'pg_catalog.pg_type'::regclass AND t.oid = m.objid
) facts
ORDER BY line COLLATE "C"
