<?php
/* WordPress configuration of the peer test (tests/test_wordpress_peer.py): everything lives in
 * the test's folder CP_WP_DIR, the site answers at CP_WP_URL (php -S on 127.0.0.1), MariaDB
 * listens on a Unix socket only. Read from the environment, so this file is copied unchanged. */
$cp_dir = getenv('CP_WP_DIR');
$cp_url = getenv('CP_WP_URL');
if (!$cp_dir || !$cp_url) {
    http_response_code(500);
    exit("CP_WP_DIR and CP_WP_URL must be set\n");
}

define('DB_NAME', 'wp');
define('DB_USER', 'root');
define('DB_PASSWORD', '');
define('DB_HOST', 'localhost:' . $cp_dir . '/mysqld.sock');
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
$table_prefix = 'wp_';

/* Fixed salts: a throwaway site that lives for one test run. */
foreach (['AUTH_KEY', 'SECURE_AUTH_KEY', 'LOGGED_IN_KEY', 'NONCE_KEY', 'AUTH_SALT',
          'SECURE_AUTH_SALT', 'LOGGED_IN_SALT', 'NONCE_SALT'] as $k) {
    define($k, 'calpost-peer-test-' . $k);
}

define('WP_HOME', $cp_url);
define('WP_SITEURL', $cp_url);
define('WP_CONTENT_DIR', $cp_dir . '/content');
define('WP_CONTENT_URL', $cp_url . '/wp-content');
/* Application Passwords over plain http need the 'local' environment type. */
define('WP_ENVIRONMENT_TYPE', 'local');
/* No calls home, no cron requests, no update checks. */
define('WP_HTTP_BLOCK_EXTERNAL', true);
define('DISABLE_WP_CRON', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_DEBUG', false);

if (!defined('ABSPATH')) {
    define('ABSPATH', __DIR__ . '/');
}
require_once ABSPATH . 'wp-settings.php';
