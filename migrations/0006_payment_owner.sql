-- Whose payment it is, so the sandbox checkout acts for the order's owner alone
-- (payments area; the payer is known when the payment request is filed).
ALTER TABLE payments ADD COLUMN user_id uuid;
UPDATE payments p SET user_id = o.user_id FROM orders o WHERE o.id = p.order_id;
