-- The prices pg_bailian ships in bailian.seed_prices.
--
-- Units: yuan (CNY) per million tokens, Bailian's Beijing (Chinese mainland) real-time price.
--   input_price, output_price: seed 002 (shared/seeds/002_e8d63ac85703bf56.txt, "百炼模型盘点",
--     2026-02-28), for every model of the registry it prices. Seed 002 gives one figure per
--     model; where Bailian bills by tiers of the request's input length (the whole request at
--     its tier), that figure is the lowest tier and the line names the higher ones.
--   thinking_output_price: the output price in thinking mode where the Bailian pricing page
--     (research S12, help.aliyun.com/zh/model-studio/model-pricing, about 2026-04) gives one
--     apart; NULL: the same as output_price (also for thinking-only models, whose output
--     price is their thinking price).
--   cached_input_ratio: 0.2 for the models Bailian's context-cache page (research S9, §3.6)
--     lists as supporting the implicit cache (a hit costs 20 % of the input price; snapshot
--     and -latest models are excluded there), 1.0 otherwise.
--   batch_ratio: 0.5 where the pricing page (S12, research §1.8) marks the model "Batch调用半价"
--     (seed 002 says batch calls cost half, without naming models), else NULL.
--
-- Not here (no row, so their cost is NULL, not 0): every model seed 002 does not price, even
-- where the pricing page does (the embeddings, rerank, qwen-long, the Qwen3-VL models, ...),
-- and models seed 002 prices that pg_bailian serves through OpenSearch only (qwen-turbo,
-- qwen3-235b-a22b, qwq-32b): OpenSearch bills its own way, not at Bailian's prices.
--
-- Where the pricing page (S12) differs from seed 002, seed 002's figure is kept and the line
-- names the official one; the pricing page is later than the seed, so a DBA should check the
-- live page and edit ai_prices.

INSERT INTO bailian.seed_prices (model_type, input_price, output_price, thinking_output_price, cached_input_ratio, batch_ratio, source) VALUES
 ('deepseek-r1', 4, 16, NULL, 0.2, 0.5, 'seed 002 (2026-02-28); implicit cache: Bailian context-cache page (S9); batch: Bailian pricing page (S12)'),
 ('deepseek-r1-distill-qwen-14b', 0.2, 0.8, NULL, 1.0, NULL, 'seed 002 (2026-02-28)'), -- official (S12): 1 / 3
 ('deepseek-r1-distill-qwen-32b', 0.5, 2, NULL, 1.0, NULL, 'seed 002 (2026-02-28)'), -- official (S12): 2 / 6
 ('deepseek-v3', 1, 4, NULL, 0.2, 0.5, 'seed 002 (2026-02-28); implicit cache: Bailian context-cache page (S9); batch: Bailian pricing page (S12)'), -- official (S12): 2 / 8
 ('glm-4.7', 2, 8, NULL, 0.2, NULL, 'seed 002 (2026-02-28); implicit cache: Bailian context-cache page (S9)'), -- official (S12): input <=32K 3 / 14, 32K-166K 4 / 16
 ('glm-5', 4, 16, NULL, 0.2, NULL, 'seed 002 (2026-02-28); implicit cache: Bailian context-cache page (S9)'), -- official (S12): input <=32K 4 / 18, 32K-198K 6 / 22
 ('kimi-k2-thinking', 1.6, 6, NULL, 0.2, NULL, 'seed 002 (2026-02-28); implicit cache: Bailian context-cache page (S9)'), -- official (S12): 4 / 16
 ('qwen-flash', 0.15, 1.5, NULL, 0.2, 0.5, 'seed 002 (2026-02-28); implicit cache: Bailian context-cache page (S9); batch: Bailian pricing page (S12)'), -- tiered (S12): input <=128K 0.15 / 1.5, 128K-256K 0.6 / 6, 256K-1M 1.2 / 12
 ('qwen-max', 2.4, 9.6, NULL, 0.2, 0.5, 'seed 002 (2026-02-28); implicit cache: Bailian context-cache page (S9); batch: Bailian pricing page (S12)'),
 ('qwen-mt-plus', 1, 3, NULL, 1.0, NULL, 'seed 002 (2026-02-28)'), -- official (S12): 1.8 / 5.4
 ('qwen-mt-turbo', 0.3, 0.6, NULL, 1.0, NULL, 'seed 002 (2026-02-28)'), -- official (S12): 0.7 / 1.95
 ('qwen-plus', 0.8, 2, 8, 0.2, 0.5, 'seed 002 (2026-02-28); thinking price: Bailian pricing page (S12); implicit cache: Bailian context-cache page (S9); batch: Bailian pricing page (S12)'), -- tiered (S12): input <=128K 0.8 / 2 / 8 thinking, 128K-256K 2.4 / 20 / 24, 256K-1M 4.8 / 48 / 64
 ('qwen-plus-latest', 0.8, 2, 8, 1.0, 0.5, 'seed 002 (2026-02-28); thinking price: Bailian pricing page (S12); batch: Bailian pricing page (S12)'), -- tiered as qwen-plus (S12); no implicit cache for -latest models (S9)
 ('qwen3-max', 2.5, 10, NULL, 0.2, 0.5, 'seed 002 (2026-02-28); implicit cache: Bailian context-cache page (S9); batch: Bailian pricing page (S12)'), -- tiered (S12): input <=32K 2.5 / 10, 32K-128K 4 / 16, 128K-252K 7 / 28
 ('qwq-plus', 1.6, 4, NULL, 1.0, 0.5, 'seed 002 (2026-02-28); batch: Bailian pricing page (S12)');
