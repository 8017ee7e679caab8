INSERT INTO replicated (payload, n) SELECT 'benchmark row', g FROM generate_series(1, 1000) g;
