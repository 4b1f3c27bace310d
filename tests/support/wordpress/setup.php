<?php
/* Installs WordPress into the empty database of the peer test and prints, as JSON, what the
 * test needs: {"user", "app_password", "category_id"}. Run with php-cli from the site's root,
 * with CP_WP_DIR and CP_WP_URL set (see wp-config.php). */
define('WP_INSTALLING', true);
$_SERVER['HTTP_HOST'] = parse_url(getenv('CP_WP_URL'), PHP_URL_HOST);
require __DIR__ . '/wp-load.php';
/* No "your new site" mail (there is no sendmail here). */
function wp_new_blog_notification($blog_title, $blog_url, $user_id, $password) {
}
require_once ABSPATH . 'wp-admin/includes/upgrade.php';

$user = 'editor';
$r = wp_install('calpost peer', $user, 'editor@example.test', false, '',
                'login-password-' . bin2hex(random_bytes(8)));
$uid = $r['user_id'];
/* Pretty permalinks, so that /wp-json/ is routed (the install's own check needs a running
 * server); ?rest_route= works either way. */
update_option('permalink_structure', '/%year%/%monthnum%/%postname%/');
flush_rewrite_rules(false);

/* A category that a post names; tags are created by the connector. */
$cat = wp_insert_term('Releases', 'category', ['slug' => 'releases']);
if (is_wp_error($cat)) {
    fwrite(STDERR, $cat->get_error_message() . "\n");
    exit(1);
}

$created = WP_Application_Passwords::create_new_application_password($uid, ['name' => 'calpost']);
if (is_wp_error($created)) {
    fwrite(STDERR, $created->get_error_message() . "\n");
    exit(1);
}
$password = $created[0];
echo json_encode(['user' => $user, 'app_password' => $password,
                  'category_id' => $cat['term_id']]), "\n";
