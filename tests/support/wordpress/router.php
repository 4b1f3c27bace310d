<?php
/* Router of `php -S` for the peer test: existing files (uploads) are served as they are,
 * everything else goes to WordPress's index.php, as Apache's rewrite rules would do. */
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
if ($path !== '/' && is_file($_SERVER['DOCUMENT_ROOT'] . $path)) {
    return false;
}
$_SERVER['SCRIPT_NAME'] = '/index.php';
require $_SERVER['DOCUMENT_ROOT'] . '/index.php';
